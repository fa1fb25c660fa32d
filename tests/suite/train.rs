//! Training end to end on a small synthetic store: it learns, it writes its outputs, and a run
//! stopped after an epoch and resumed gives the same metrics as an uninterrupted one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common::checkpoint_bits;
use candle_core::Device;
use cifar_stream::prep;
use cifar_stream::source::synthetic;
use cifar_stream::stream::EpochStats;
use cifar_stream::train::config::TrainConfig;
use cifar_stream::train::{self, EpochMetrics, Observer, Silent, Snapshot, Trainer};
use indicatif::ProgressBar;

fn store(dir: &Path, per_class: usize) {
    let bar = ProgressBar::hidden();
    prep::write_store(&synthetic::generate(per_class, 2, &bar), dir, false, &bar).unwrap();
}

/// The tiny preset made smaller still, so that CI trains it for seconds.
fn micro(data: &Path, runs: &Path, name: &str, epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::preset("tiny").unwrap();
    c.data = data.to_path_buf();
    c.runs = runs.to_path_buf();
    c.name = name.into();
    c.epochs = epochs;
    c.batch_size = 20;
    c.eval_batch_size = 100;
    let m = c.model.se_resnet_d_mut().unwrap();
    m.widths = vec![4, 8, 16];
    m.stem_width = 8;
    c.schedule.lr = 0.1;
    c.schedule.restart_every = epochs as f64;
    c.ema_decay = 0.9;
    c
}

/// A new (or resumed) run of `config` on the CPU, augmenting on two threads.
fn trainer(config: &TrainConfig, resume: bool) -> Trainer {
    let t = if resume {
        Trainer::resume(&config.run_dir(), config.clone(), Device::Cpu)
    } else {
        Trainer::new(config.clone(), Device::Cpu)
    };
    t.unwrap().with_pool(pool())
}

/// Trains (or resumes) `config` to the end, with a cancel flag nobody sets.
fn run(config: &TrainConfig, resume: bool, observer: &mut dyn Observer) -> train::Outcome {
    trainer(config, resume).fit(observer).unwrap()
}

fn pool() -> Arc<rayon::ThreadPool> {
    Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap(),
    )
}

#[test]
fn tiny_model_learns_the_synthetic_classes_and_writes_its_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    store(&data, 24);
    let mut config = micro(&data, tmp.path(), "learn", 6);
    // Few images and few steps: no augmentation, a brisk learning rate.
    config.augment =
        cifar_stream::augment::AugmentConfig::with_policy(cifar_stream::augment::PolicyName::None);
    config.batch_size = 16;
    config.schedule.lr = 0.05;
    config.schedule.warmup_epochs = 0.0;
    let outcome = run(&config, false, &mut Silent);
    assert_eq!(outcome.history.len(), 6);
    let last = outcome.history.last().unwrap();
    let best = last.test_acc.unwrap().max(last.ema_test_acc.unwrap());
    assert!(
        best > 0.3,
        "test accuracy {best} (chance is 0.10): {:?}",
        outcome.history
    );
    assert!(last.train_loss < outcome.history[0].train_loss);
    let dir = config.run_dir();
    for f in [
        "metrics.jsonl",
        "metrics.csv",
        "curve.png",
        "checkpoint.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7);
    assert!(image::open(dir.join("curve.png")).is_ok());
}

/// Stops the run (as Ctrl-C would) once `after` epochs have finished.
struct StopAfter {
    after: usize,
    cancel: Arc<AtomicBool>,
}

impl Observer for StopAfter {
    fn epoch_end(&mut self, m: &EpochMetrics, _: &EpochStats) {
        if m.epoch + 1 == self.after {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
}

#[test]
fn a_resumed_run_gives_the_same_metrics_as_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    store(&data, 8);
    let whole = micro(&data, tmp.path(), "whole", 3);
    let full = run(&whole, false, &mut Silent);

    let split = micro(&data, tmp.path(), "split", 3);
    let mut stopping = trainer(&split, false);
    let mut stop = StopAfter {
        after: 1,
        cancel: stopping.cancel_flag(),
    };
    let first = stopping.fit(&mut stop).unwrap();
    drop(stopping); // as the process would end: the run folder is free again
    assert!(first.interrupted);
    assert_eq!(first.history.len(), 1);
    let resumed = run(&split, true, &mut Silent);
    assert_eq!(resumed.history.len(), 3);
    assert_eq!(keys(&full.history), keys(&resumed.history));
}

type Key = (
    usize,
    f64,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

/// What must repeat exactly between two runs of the same configuration (not the timings).
fn keys(history: &[EpochMetrics]) -> Vec<Key> {
    history
        .iter()
        .map(|m| {
            (
                m.epoch,
                m.lr,
                m.train_loss,
                m.train_acc,
                m.test_loss,
                m.test_acc,
                m.ema_test_loss,
                m.ema_test_acc,
            )
        })
        .collect()
}

#[test]
fn a_library_caller_drives_a_run_epoch_by_epoch_saves_and_resumes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    store(&data, 8); // 80 images: 4 steps of 20 per epoch
    let cadence = |name: &str| {
        let mut c = micro(&data, tmp.path(), name, 3);
        c.eval_every = 2;
        c.save_every = 2;
        c
    };
    let config = cadence("by-hand");
    let mut t = trainer(&config, false);
    // The library writes the resolved configuration; it reads back as the same.
    let written = TrainConfig::read(&config.run_dir().join("config.toml")).unwrap();
    assert_eq!(written, config);

    let trained = t.train_epoch(&mut Silent).unwrap().unwrap();
    assert!(trained.complete);
    assert_eq!((trained.epoch, trained.images), (0, 80));
    assert_eq!(t.learner().steps(), t.batches_per_epoch());
    assert!(!t.evaluation_due(0) && t.evaluation_due(1) && t.evaluation_due(2));
    assert!(!t.save_due(0) && t.save_due(1) && t.save_due(2));
    let m = t.finish_epoch(&trained, None).unwrap();
    assert_eq!((m.epoch, m.test_acc), (0, None));
    assert_eq!(t.next_epoch(), 1);
    t.save().unwrap();
    drop(t);

    // A second new run in the same folder is refused; resuming continues at epoch 1.
    assert!(matches!(
        Trainer::new(config.clone(), Device::Cpu),
        Err(train::Error::RunExists { .. })
    ));
    let mut resumed = trainer(&config, true);
    assert_eq!(resumed.next_epoch(), 1);
    assert_eq!(resumed.learner().steps(), 4);
    let outcome = resumed.fit(&mut Silent).unwrap();
    assert!(!outcome.interrupted);

    let whole = run(&cadence("whole"), false, &mut Silent);
    assert_eq!(keys(&outcome.history), keys(&whole.history));
    // The headline is the EMA model's accuracy at the last (evaluated) epoch.
    let h = outcome.headline().unwrap();
    let last = outcome.history.last().unwrap();
    assert_eq!((h.epoch, h.stale), (2, false));
    assert_eq!(Some(h.accuracy), last.ema_test_acc);
    assert_eq!(h.raw_and_ema, Some((last.test_acc.unwrap(), h.accuracy)));
}

/// Sets the cancel flag (as Ctrl-C does) after `after` optimizer steps.
struct InterruptAt {
    after: usize,
    steps: usize,
    cancel: Arc<AtomicBool>,
}

impl Observer for InterruptAt {
    fn step(&mut self, _loss: Option<f64>) {
        self.steps += 1;
        if self.steps == self.after {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
}

#[test]
fn ctrl_c_in_the_middle_of_an_epoch_saves_the_exact_step_and_resuming_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    store(&data, 8); // 80 images: 4 steps of 20 per epoch
    let whole = micro(&data, tmp.path(), "whole", 2);
    let full = run(&whole, false, &mut Silent);
    // Stopped after step 6 (two batches into epoch 1), then after step 7 of the resumed run.
    let config = micro(&data, tmp.path(), "ctrlc", 2);
    let mut stopping = trainer(&config, false);
    let mut observer = InterruptAt {
        after: 6,
        steps: 0,
        cancel: stopping.cancel_flag(),
    };
    let stopped = stopping.fit(&mut observer).unwrap();
    drop(stopping);
    assert!(stopped.interrupted);
    assert_eq!(
        stopped.history.len(),
        1,
        "epoch 0 completed, epoch 1 interrupted"
    );
    let state = Snapshot::load(&config.run_dir(), &Device::Cpu)
        .unwrap()
        .state;
    assert_eq!((state.next_epoch, state.batch, state.steps), (1, 2, 6));
    assert_eq!(
        state.epoch_images, 40,
        "the partial epoch's running sums are kept"
    );
    let mut again = trainer(&config, true);
    let mut observer = InterruptAt {
        after: 1,
        steps: 0,
        cancel: again.cancel_flag(),
    };
    assert!(again.fit(&mut observer).unwrap().interrupted);
    drop(again);
    let resumed = run(&config, true, &mut Silent);
    assert!(!resumed.interrupted);
    assert_eq!(resumed.history.len(), 2);
    // Bit for bit: the metrics (timings aside) and every tensor of the final checkpoint.
    assert_eq!(keys(&full.history), keys(&resumed.history));
    assert_eq!(
        checkpoint_bits(&whole.run_dir()),
        checkpoint_bits(&config.run_dir())
    );
}

/// Counts steps, loss reads and epoch sizes.
#[derive(Default)]
struct Counter {
    steps: usize,
    reads: Vec<f64>,
    images: Vec<usize>,
}

impl Observer for Counter {
    fn step(&mut self, loss: Option<f64>) {
        self.steps += 1;
        self.reads.extend(loss);
    }
    fn epoch_end(&mut self, _: &EpochMetrics, stats: &EpochStats) {
        self.images.push(stats.images);
    }
}

#[test]
fn a_batch_limit_shortens_every_epoch_loss_is_read_every_few_steps_and_eval_every_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    store(&data, 24);
    let mut config = micro(&data, tmp.path(), "limit", 2);
    let per_epoch = train::LOSS_READ_EVERY + 2;
    config.batch_size = 4;
    config.limit_train_batches = Some(per_epoch);
    config.epochs = 3;
    config.eval_every = 2;
    let mut counter = Counter::default();
    let outcome = run(&config, false, &mut counter);
    assert_eq!(counter.steps, 3 * per_epoch);
    assert_eq!(counter.images, vec![4 * per_epoch; 3]);
    // One progress read per LOSS_READ_EVERY steps of each epoch, each a running mean loss.
    assert_eq!(counter.reads.len(), 3);
    // eval_every 2: epoch 2 and the last (3) are evaluated, epoch 1 is not.
    let evaluated: Vec<bool> = outcome
        .history
        .iter()
        .map(|m| m.test_acc.is_some())
        .collect();
    assert_eq!(evaluated, [false, true, true]);
    assert!(outcome.history[0].ema_test_acc.is_none());
    let csv = std::fs::read_to_string(config.run_dir().join("metrics.csv")).unwrap();
    let first: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(&first[4..8], ["", "", "", ""], "{csv}");
    assert!(counter.reads.iter().all(|l| l.is_finite() && *l > 0.0));
    assert!(outcome
        .history
        .iter()
        .all(|m| m.train_loss.is_finite() && (0.0..=1.0).contains(&m.train_acc)));
}

#[test]
fn a_second_trainer_cannot_take_a_run_folder_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    store(&data, 8);
    let config = micro(&data, tmp.path(), "locked", 1);
    let mut first = trainer(&config, false);
    let trained = first.train_epoch(&mut Silent).unwrap().unwrap();
    first.finish_epoch(&trained, None).unwrap();
    first.save().unwrap();
    // While the first lives, neither a resume nor a new run of the same folder may write there.
    let busy = Trainer::resume(&config.run_dir(), config.clone(), Device::Cpu);
    assert!(
        matches!(busy, Err(train::Error::Busy { .. })),
        "resume was let in"
    );
    drop(first);
    assert!(Trainer::resume(&config.run_dir(), config.clone(), Device::Cpu).is_ok());
}

/// The `fast` preset (whitened net, lookahead, alternating flip, flip + translate TTA) made
/// small enough for seconds: narrow groups, f32, a pull every 2 steps, the whitening bias frozen
/// after the first epoch.
fn fast_micro(data: &Path, runs: &Path, name: &str, epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::preset("fast").unwrap();
    c.precision = cifar_stream::model::Precision::F32;
    // The rate of batch 512 (what these sizes were tried with).
    c.schedule.lr /= 2.0;
    c.data = data.to_path_buf();
    c.runs = runs.to_path_buf();
    c.name = name.into();
    c.epochs = epochs;
    c.eval_every = epochs;
    c.batch_size = 20;
    c.eval_batch_size = 100;
    let cifar_stream::model::Architecture::Whitened(m) = &mut c.model else {
        panic!("fast is the whitened net")
    };
    m.widths = vec![8, 16, 16];
    m.whiten_bias_epochs = 1.0;
    c.lookahead.as_mut().unwrap().every = 2;
    c
}

/// `fast-cpu` (airbench94_muon's recipe: Muon on the filter banks, SGD on the rest, the
/// whitening bias's rate tapering to zero over its first epoch) at `fast_micro`'s size.
fn muon_micro(data: &Path, runs: &Path, name: &str, epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::preset("fast-cpu").unwrap();
    let small = fast_micro(data, runs, name, epochs);
    c.data = small.data;
    c.runs = small.runs;
    c.name = small.name;
    c.epochs = epochs;
    c.eval_every = epochs;
    c.batch_size = small.batch_size;
    c.eval_batch_size = small.eval_batch_size;
    c.precision = small.precision;
    // The preset's head rate is per image on a summed loss: 0.67 · batch on the mean.
    c.schedule.lr = 0.67 * c.batch_size as f64;
    let cifar_stream::model::Architecture::Whitened(m) = &mut c.model else {
        panic!("fast-cpu is the whitened net")
    };
    m.widths = vec![8, 16, 16];
    m.logit_scale = 1.0 / 16.0;
    m.whiten_bias_epochs = 1.0;
    c
}

#[test]
fn the_muon_preset_learns_the_synthetic_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    store(&data, 24);
    let config = muon_micro(&data, tmp.path(), "muon", 4);
    assert!(config.optim.muon.is_some() && config.lookahead.is_none());
    let outcome = run(&config, false, &mut Silent);
    let last = outcome.history.last().unwrap();
    assert!(
        last.test_acc.unwrap() > 0.3,
        "test accuracy {:?} (chance is 0.10)",
        outcome.history
    );
}

#[test]
fn a_muon_run_stopped_inside_the_whitening_taper_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    store(&data, 8); // 80 images: 4 steps of 20 per epoch
                     // Stopped after step 3, while the whitening bias still trains at a falling rate.
    let bits = stopped_run_resumes_exactly(|name| muon_micro(&data, tmp.path(), name, 2), 3);
    // Muon's buffers are in the checkpoint, so the comparison covers them.
    assert!(
        bits.iter()
            .any(|(n, _)| n == "momentum.group0.conv1.weight"),
        "{:?}",
        bits.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
}

#[test]
fn a_muon_run_does_not_resume_as_sgd() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    store(&data, 8);
    let config = muon_micro(&data, tmp.path(), "muon", 1);
    run(&config, false, &mut Silent);
    let mut sgd = config.clone();
    sgd.optim.muon = None;
    let e = match Trainer::resume(&config.run_dir(), sgd, Device::Cpu) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("resumed Muon's buffers into SGD"),
    };
    assert!(e.contains("Muon") && e.contains("SGD"), "{e}");
}

#[test]
fn the_fast_preset_learns_the_synthetic_classes_with_frozen_whitening() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    store(&data, 24);
    let config = fast_micro(&data, tmp.path(), "fast", 4);
    let mut t = trainer(&config, false);
    let whiten = |t: &Trainer| {
        let state = t.learner().state();
        let w = &state
            .iter()
            .find(|(n, _)| n == "model.whiten.weight")
            .unwrap()
            .1;
        w.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let filters = whiten(&t);
    assert!(
        filters.iter().any(|&v| v != 0.0),
        "filters set from the data"
    );
    let outcome = t.fit(&mut Silent).unwrap();
    assert_eq!(whiten(&t), filters, "the whitening filters never train");
    let last = outcome.history.last().unwrap();
    assert!(
        last.test_acc.unwrap() > 0.3,
        "test accuracy {:?} (chance is 0.10)",
        outcome.history
    );
    // Lookahead, not an EMA: one model, one accuracy.
    assert!(!outcome.ema && last.ema_test_acc == last.test_acc);
}

#[test]
fn a_fast_run_stopped_mid_epoch_resumes_exactly_with_its_lookahead_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    store(&data, 8); // 80 images: 4 steps of 20 per epoch
                     // Stopped after step 5 (between two pulls, after the bias froze), resumed to the end.
    stopped_run_resumes_exactly(|name| fast_micro(&data, tmp.path(), name, 3), 5);
}

/// Runs `make("whole")` straight through, and `make("stopped")` interrupted after step `after`
/// then resumed to the end; asserts both give the same history and checkpoint bits, and returns
/// those bits.
fn stopped_run_resumes_exactly(
    make: impl Fn(&str) -> TrainConfig,
    after: usize,
) -> Vec<(String, Vec<u64>)> {
    let whole = make("whole");
    let full = run(&whole, false, &mut Silent);
    let config = make("stopped");
    let mut stopping = trainer(&config, false);
    let mut observer = InterruptAt {
        after,
        steps: 0,
        cancel: stopping.cancel_flag(),
    };
    assert!(stopping.fit(&mut observer).unwrap().interrupted);
    drop(stopping);
    let resumed = run(&config, true, &mut Silent);
    assert_eq!(keys(&full.history), keys(&resumed.history));
    let bits = checkpoint_bits(&whole.run_dir());
    assert_eq!(bits, checkpoint_bits(&config.run_dir()));
    bits
}

/// A run that logged past its checkpoint (its last epoch trained, evaluated and logged, then
/// stopped before the save, as a kill there would) resumes with the curves of a run never
/// stopped: TensorBoard's reader sees each tag's steps once, increasing, with the same values
/// (timings aside).
#[test]
fn tensorboard_curves_continue_without_duplicates_after_logging_past_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, runs) = (tmp.path().join("data"), tmp.path().join("runs"));
    // 600 images in batches of 20: 30 steps an epoch, the loss logged at each one's 25th.
    store(&data, 60);
    run(&micro(&data, &runs, "whole", 3), false, &mut train::Silent);
    let cut = micro(&data, &runs, "cut", 3);
    let mut t = trainer(&cut, false);
    for epoch in 0..3 {
        let trained = t.train_epoch(&mut train::Silent).unwrap().unwrap();
        let evaluation = t.evaluation_due(epoch).then(|| t.evaluate().unwrap());
        t.finish_epoch(&trained, evaluation.as_ref()).unwrap();
        if epoch < 2 {
            t.save().unwrap();
        }
    }
    drop(t);
    run(&cut, true, &mut train::Silent);
    let whole = crate::common::tensorboard_events(&runs.join("whole"));
    let (Some(whole), Some(cut)) = (whole, crate::common::tensorboard_events(&runs.join("cut")))
    else {
        return;
    };
    crate::common::steps_increase(&cut);
    let steps: Vec<i64> = (cut["train/loss"].as_array().unwrap().iter())
        .map(|p| p[0].as_i64().unwrap())
        .collect();
    assert_eq!(steps, [25, 55, 85]);
    crate::common::same_curves(&whole, &cut);
}
