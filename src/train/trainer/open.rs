//! Opening a run: a new one (fresh weights, a folder that holds no run) or one resumed from its
//! checkpoint, with the stores, the learner, the augmentation pool and the folder checked and
//! taken in that order.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::Device;

use super::{train_loader_config, Trainer};
use crate::augment::{self, Augmenter};
use crate::dist::{Collective, Local};
use crate::ops::Kernels;
use crate::train::capture::CaptureCheck;
use crate::train::checkpoint::Snapshot;
use crate::train::config::TrainConfig;
use crate::train::epoch_sums::EpochSums;
use crate::train::error::{Error, Result};
use crate::train::graph::StepGraphs;
use crate::train::inputs::Inputs;
use crate::train::learner::Learner;
use crate::train::run_dir::{split_run_dir, RunDir};
use crate::train::stores::Stores;

/// Training images the whitening filters are computed from (airbench94's 5,000).
pub const WHITEN_IMAGES: usize = 5000;

impl Trainer {
    /// Starts a new run in `config.run_dir()`: refuses a folder that already holds one, writes
    /// the resolved `config.toml` there, opens the store and builds fresh weights.
    pub fn new(config: TrainConfig, device: Device) -> Result<Trainer> {
        Trainer::new_in(config, device, Arc::new(Local))
    }

    /// [`Trainer::new`] as one rank of `world` (data-parallel): every rank trains on its share
    /// of each epoch with the gradients averaged; rank 0 alone writes the run folder.
    pub fn new_in(
        config: TrainConfig,
        device: Device,
        world: Arc<dyn Collective>,
    ) -> Result<Trainer> {
        // Every rank looks, so that all refuse together.
        RunDir::refuse_saved(&config.run_dir())?;
        let mut trainer = Trainer::open(config, device, world)?;
        trainer.whiten()?;
        trainer.learner.broadcast_from_main()?;
        trainer.write_config()?;
        trainer.open_board(false)?;
        Ok(trainer)
    }

    /// Gives a whitened net its first layer's filters from [`WHITEN_IMAGES`] training images
    /// evenly spaced through the store (a store may be sorted by class), as the network sees
    /// them (normalised, not augmented); other networks have nothing to do. Every rank computes
    /// the same filters from the same images.
    fn whiten(&self) -> Result<()> {
        if self.learner.model().as_whitened().is_none() {
            return Ok(());
        }
        let shape = self.stores.header.shape;
        let len = shape.image_len();
        let total = self.stores.train.len();
        let n = WHITEN_IMAGES.min(total);
        let mut images = vec![0.0f32; n * len];
        for (i, out) in images.chunks_exact_mut(len).enumerate() {
            let index = i * total / n.max(1);
            self.eval_augmenter
                .augment_into(self.stores.train.image(index), 0, index, out);
        }
        let chw = (
            shape.channels as usize,
            shape.height as usize,
            shape.width as usize,
        );
        self.learner.whiten_from(&images, chw)
    }

    /// Continues the run saved in `dir` exactly where its checkpoint left it: at the next batch
    /// of the same epoch, with the same weights, optimizer, EMA and running sums. `config` may
    /// change what does not move that position (more epochs, another cadence); its `runs` and
    /// `name` become `dir`'s, wherever the run was first started.
    pub fn resume(dir: &Path, config: TrainConfig, device: Device) -> Result<Trainer> {
        Trainer::resume_in(dir, config, device, Arc::new(Local))
    }

    /// [`Trainer::resume`] as one rank of `world`; the run must have been saved by as many
    /// ranks (each reads the checkpoint; the folder must be shared between the machines).
    pub fn resume_in(
        dir: &Path,
        mut config: TrainConfig,
        device: Device,
        world: Arc<dyn Collective>,
    ) -> Result<Trainer> {
        let (runs, name) = split_run_dir(dir)?;
        (config.runs, config.name) = (runs, name);
        let mut trainer = Trainer::open(config, device, world)?;
        let snapshot = Snapshot::load(&trainer.dir, &trainer.device)?;
        let state = &snapshot.state;
        if let Some(why) = state.refuses_resume(&trainer.config, trainer.world.size()) {
            let dir = trainer.dir.display();
            return Err(Error::Unsupported(format!("{dir}: {why}")));
        }
        let tensors = snapshot.tensors();
        trainer
            .learner
            .load_state(tensors, state.steps)
            .map_err(|source| Error::State {
                path: snapshot.path().to_path_buf(),
                source: Box::new(source),
            })?;
        trainer.learner.broadcast_from_main()?;
        trainer.sums.load_state(tensors, state.epoch_images)?;
        let state = snapshot.state;
        trainer.next_epoch = state.next_epoch;
        trainer.batch = state.batch;
        trainer.history = state.history;
        trainer.history.truncate(trainer.next_epoch);
        trainer.write_config()?;
        trainer.open_board(true)?;
        Ok(trainer)
    }

    fn open(config: TrainConfig, device: Device, world: Arc<dyn Collective>) -> Result<Trainer> {
        config.validate()?;
        if config.sync_bn
            && world.size() > 1
            && (!device.is_cpu() || config.kernels != Kernels::Fast)
        {
            return Err(Error::Unsupported(
                "sync_bn runs with the CPU fast kernels only (the CUDA BatchNorm has no \
                 all-reduce yet)"
                    .into(),
            ));
        }
        let dir = config.run_dir();
        let stores = Stores::open(&config)?;
        let batches_per_epoch = train_loader_config(&config, world.as_ref(), 0, 0)
            .sampler(stores.train.len())
            .batches_per_epoch();
        if batches_per_epoch == 0 {
            return Err(Error::Unsupported(format!(
                "fewer training images than one batch of {} per rank ({} ranks)",
                config.batch_size,
                world.size()
            )));
        }
        let pool = Arc::new(
            augment::thread_pool(config.threads)
                .map_err(|e| Error::Unsupported(format!("starting the augmentation pool: {e}")))?,
        );
        // The one place a training run sets candle's process-wide TF32 switch for its device.
        crate::device::set_tf32(&device, config.tf32);
        let mut learner = Learner::new(&config, &device, batches_per_epoch)?;
        let sums = EpochSums::new(&device)?;
        let graphs = StepGraphs::for_run(config.cuda_graph, &device, world.as_ref())?
            .map(|g| g.freezing_rates(config.freeze_graph_rates));
        learner.set_world(world.clone(), config.sync_bn);
        // Only now, with the data and the model in hand, does the run folder get touched; by
        // rank 0 alone.
        let run_dir = if world.is_main() {
            Some(RunDir::take(&dir)?)
        } else {
            None
        };
        let header = &stores.header;
        let eval_augmenter = Arc::new(Augmenter::normalise_only(
            header.shape,
            &header.mean,
            &header.std,
        ));
        Ok(Trainer {
            config,
            device,
            dir,
            run_dir,
            learner,
            stores,
            eval_augmenter,
            pool,
            cancel: Arc::new(AtomicBool::new(false)),
            loader: None,
            batches_per_epoch,
            next_epoch: 0,
            batch: 0,
            sums,
            inputs: Inputs::new(),
            graphs,
            // Data-parallel steps average gradients through the host (MPI) or a device
            // collective whose capture only a GPU can show: the check holds a lone process.
            capture: (cfg!(debug_assertions) && world.size() == 1).then(CaptureCheck::default),
            history: Vec::new(),
            board: None,
            world,
        })
    }

    pub(super) fn write_config(&self) -> Result<()> {
        match &self.run_dir {
            Some(dir) => dir.write_config(&self.config),
            None => Ok(()),
        }
    }
}
