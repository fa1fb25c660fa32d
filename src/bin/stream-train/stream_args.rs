//! Flag groups of the stream and the run: data, batch, seed, threads, the run's own settings,
//! and augmentation (see `args` for how groups are used).

use std::path::PathBuf;

use clap::Args;

use cifar_stream::augment::ops::PadFill;
use cifar_stream::augment::{AugmentConfig, PolicyName};
use cifar_stream::train::config::TrainConfig;
use cifar_stream::train::GraphMode;
use cifar_stream::train::Tta;

use crate::args::Apply;

/// The training stream: which store, how many epochs, how far ahead.
#[derive(Args)]
#[group(id = "data_flags", multiple = true)]
pub struct DataFlags {
    /// Store folder (holds train.store and test.store) [preset: datasets/cifar10; tiny: datasets/synthetic].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Epochs [seed: 230].
    #[arg(long)]
    epochs: Option<usize>,
    /// Batches ready in the channel ahead of the trainer [default: 4].
    #[arg(long)]
    prefetch: Option<usize>,
    /// Stop each training epoch after N batches (a quick run, or a profile of N steps); the
    /// learning-rate schedule counts the shorter epoch [default: every batch].
    #[arg(long, value_name = "N")]
    limit_train_batches: Option<usize>,
}

impl Apply for DataFlags {
    fn apply(&self, c: &mut TrainConfig) {
        set!(self, c: data => data, epochs => epochs, prefetch => prefetch);
        if let Some(n) = self.limit_train_batches {
            c.limit_train_batches = Some(n);
        }
    }
}

/// `--batch-size`.
#[derive(Args)]
#[group(id = "batch_flag")]
pub struct BatchFlag {
    /// Images per batch [seed: 128].
    #[arg(long)]
    batch_size: Option<usize>,
}

impl Apply for BatchFlag {
    fn apply(&self, c: &mut TrainConfig) {
        set!(self, c: batch_size => batch_size);
    }
}

/// `--seed`.
#[derive(Args)]
#[group(id = "seed_flag")]
pub struct SeedFlag {
    /// Seed of everything random [default: 0].
    #[arg(long)]
    seed: Option<u64>,
}

impl Apply for SeedFlag {
    fn apply(&self, c: &mut TrainConfig) {
        set!(self, c: seed => seed);
    }
}

/// `--threads`.
#[derive(Args)]
#[group(id = "threads_flag")]
pub struct ThreadsFlag {
    /// Worker threads: the augmentation pool when streaming, candle's CPU ops in step-bench
    /// [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

impl Apply for ThreadsFlag {
    fn apply(&self, c: &mut TrainConfig) {
        set!(self, c: threads => threads);
    }
}

/// `--cuda-graph`, `--no-cuda-graph`: the training step as one CUDA graph, or not.
#[derive(Args)]
#[group(id = "graph_flags", multiple = true)]
pub struct GraphFlags {
    /// Require each training step as one CUDA graph (refused off CUDA or with several ranks).
    /// By default a lone process on CUDA captures its step and others run eager; the first
    /// replay is held to an eager step, and a failed or disagreeing capture goes on eager,
    /// saying why (docs/capture.md; not yet confirmed on a GPU)
    #[arg(long, conflicts_with = "no_cuda_graph")]
    cuda_graph: bool,
    /// Eager training steps, no CUDA graph (to compare against one)
    #[arg(long)]
    no_cuda_graph: bool,
    /// The GPU check's negative control: graph replays keep the captured step's rates (trains
    /// wrong on purpose)
    #[arg(long, hide = true)]
    cuda_graph_fault_freeze_rates: bool,
}

impl Apply for GraphFlags {
    fn apply(&self, c: &mut TrainConfig) {
        if self.cuda_graph {
            c.cuda_graph = GraphMode::On;
        }
        if self.no_cuda_graph {
            c.cuda_graph = GraphMode::Off;
        }
        c.freeze_graph_rates |= self.cuda_graph_fault_freeze_rates;
    }
}

/// What only a training run reads: its name and folder, the EMA, evaluation and saving.
#[derive(Args)]
#[group(id = "run_flags", multiple = true)]
pub struct RunFlags {
    /// Run name; outputs go to RUNS/NAME/ [preset: its name].
    #[arg(long)]
    name: Option<String>,
    /// Folder of runs [default: runs].
    #[arg(long)]
    runs: Option<PathBuf>,
    /// EMA decay per step, 0 disables [seed: 0.999].
    #[arg(long)]
    ema_decay: Option<f64>,
    /// Evaluate on the test split every N epochs (and after the last) [default: 1].
    #[arg(long, value_name = "N")]
    eval_every: Option<usize>,
    /// Save a checkpoint every N epochs [seed: 10].
    #[arg(long)]
    save_every: Option<usize>,
    /// Also save every N optimizer steps, mid-epoch (a resume continues from that exact step)
    /// [default: off].
    #[arg(long, value_name = "N")]
    save_every_steps: Option<usize>,
    /// Data-parallel runs (mpirun): BatchNorm statistics over the whole global batch, all-reduced
    /// in every layer (CPU fast kernels), instead of each rank's own.
    #[arg(long)]
    sync_bn: bool,
    /// No TensorBoard event file in the run folder (written by default: `tensorboard --logdir
    /// runs`)
    #[arg(long)]
    no_tensorboard: bool,
    /// Test-time augmentation of every evaluation: none, or flip (average the logits of each test
    /// image and its mirror; twice the evaluation time) [default: none].
    #[arg(long, value_enum)]
    tta: Option<Tta>,
    /// For the crash tests: pause MS milliseconds half-way through each checkpoint write and
    /// again before its rename, so that a kill can land inside one
    #[arg(long, hide = true, value_name = "MS")]
    checkpoint_write_delay_ms: Option<u64>,
}

impl Apply for RunFlags {
    fn apply(&self, c: &mut TrainConfig) {
        set!(self, c: name => name, runs => runs, ema_decay => ema_decay,
            eval_every => eval_every, save_every => save_every, tta => tta);
        if let Some(n) = self.save_every_steps {
            c.save_every_steps = Some(n);
        }
        c.sync_bn |= self.sync_bn;
        if self.no_tensorboard {
            c.tensorboard = false;
        }
        if self.checkpoint_write_delay_ms.is_some() {
            c.checkpoint_write_delay_ms = self.checkpoint_write_delay_ms;
        }
    }
}

/// Augmentation flags shared by every command that augments; unset flags keep the preset's value.
#[derive(Args, Clone)]
#[group(id = "augment_flags", multiple = true)]
pub struct AugmentFlags {
    /// Policy ops: pba (recipe), autoaugment, randaugment, basic (crop + flip only), none.
    #[arg(long, value_enum)]
    augment: Option<PolicyName>,
    /// RandAugment: ops per image [preset: 2].
    #[arg(long)]
    randaugment_n: Option<usize>,
    /// RandAugment: level 0–10 [preset: 9].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=10))]
    randaugment_m: Option<u8>,
    /// Disable the random pad-and-crop.
    #[arg(long)]
    no_crop: bool,
    /// Crop padding on every side [preset: 4].
    #[arg(long)]
    crop_padding: Option<usize>,
    /// What fills the crop padding [preset: mean].
    #[arg(long, value_enum)]
    crop_fill: Option<PadFill>,
    /// Disable the random horizontal flip.
    #[arg(long)]
    no_flip: bool,
    /// Cutout holes per image, 0 disables [preset: 3; basic/none: 0].
    #[arg(long)]
    cutout_holes: Option<usize>,
    /// Cutout square side in pixels [preset: 4].
    #[arg(long)]
    cutout_length: Option<usize>,
}

impl AugmentFlags {
    /// `base` with these flags applied; choosing a policy starts from that policy's defaults.
    pub fn over(&self, base: &AugmentConfig) -> AugmentConfig {
        let mut c = match self.augment {
            Some(p) => base.switched_to(p),
            None => base.clone(),
        };
        set!(self, c: randaugment_n => randaugment_n, randaugment_m => randaugment_m,
            crop_padding => crop_padding, crop_fill => crop_fill,
            cutout_holes => cutout_holes, cutout_length => cutout_length);
        c.crop &= !self.no_crop;
        c.flip &= !self.no_flip;
        c
    }

    /// The recipe's augmentation with these flags applied.
    pub fn config(&self) -> AugmentConfig {
        self.over(&AugmentConfig::recipe())
    }
}

impl Apply for AugmentFlags {
    fn apply(&self, c: &mut TrainConfig) {
        c.augment = self.over(&c.augment);
    }
}
