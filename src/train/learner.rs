//! What one training step changes: the weights, their EMA and the optimizer's momentum; in
//! data-parallel training, also the averaging of gradients over the ranks.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use super::error::{Result, StateError};
use super::net::Net;
use super::optim::groups::Stepper;
use super::optim::{Averaging, Groups, Muon, Optimizer, Scalars, Sgd};
use crate::dist::{Collective, Local};
use crate::model::{roles, Dropout, Mode, Network, Role};
use crate::train::config::TrainConfig;

/// The parts of a learner's state ([`Learner::state`]), each a prefix of its tensors' names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The live (raw) weights and BatchNorm statistics.
    Model,
    /// Their exponential moving average.
    Ema,
    /// SGD's momentum buffers.
    Momentum,
}

impl Part {
    /// The prefix of this part's tensor names.
    pub fn prefix(self) -> &'static str {
        match self {
            Part::Model => "model.",
            Part::Ema => "ema.",
            Part::Momentum => "momentum.",
        }
    }
}

/// The network being trained, its averaged copy (an EMA or lookahead's, when the run keeps
/// one) and its optimizers over the parameter groups, stepped one batch at a time. It knows
/// nothing of data or files: the [`Trainer`](super::Trainer) feeds it, `step-bench` times it,
/// and a checkpoint stores its [`Learner::state`].
pub struct Learner {
    net: Net,
    averaging: Averaging,
    /// This step's rates and EMA decay, on the device, written before each step.
    scalars: Scalars,
    /// The dropout mask's buffer, when the network drops anything (sized by the first step).
    dropout: Option<Var>,
    /// Who steps which parameter at what rate.
    groups: Groups,
    /// SGD, then Muon when the run uses it: each over its own groups' parameters.
    optimizers: Vec<Box<dyn Optimizer>>,
    label_smoothing: f64,
    steps: usize,
    /// The parameters frozen in the current epoch ([`Learner::freeze_for_epoch`]).
    frozen: BTreeSet<String>,
    /// Steps in the whole run (lookahead's pulls are placed by it).
    total_steps: usize,
    /// The ranks whose gradients are averaged (a lone process: [`Local`]).
    world: Arc<dyn Collective>,
    /// The ranks BatchNorm's training statistics are synchronised over (`--sync-bn`).
    batch_norm_sync: Option<Arc<dyn Collective>>,
    /// Seconds spent in collectives since the last [`Learner::take_comm_seconds`].
    comm_seconds: f64,
}

impl Learner {
    /// Fresh weights (seeded by `config.seed`), the run's averaged copy, and optimizers with
    /// empty momentum buffers, for a run of `steps_per_epoch` steps per epoch (rules counted
    /// in epochs, such as the whitening bias's taper, are placed by it).
    pub fn new(config: &TrainConfig, device: &Device, steps_per_epoch: usize) -> Result<Learner> {
        let net = Net::new(config, device)?;
        let groups = Groups::new(config, &net.named(), steps_per_epoch);
        let decays = groups.groups().iter().map(|g| g.weight_decay).collect();
        let sgd = Sgd::new(
            groups.params_of(Stepper::Sgd),
            decays,
            config.optim.momentum,
            config.optim.nesterov,
        );
        let sgd = sgd?.fused(config.kernels == crate::ops::Kernels::Fast);
        let mut optimizers: Vec<Box<dyn Optimizer>> = vec![Box::new(sgd)];
        if let Some(settings) = &config.optim.muon {
            let banks = groups.params_of(Stepper::Muon);
            optimizers.push(Box::new(Muon::new(banks, settings.clone())?));
        }
        let averaging = Averaging::new(config, device, &net)?;
        let scalars = Scalars::new(groups.groups().len(), device)?;
        Ok(Learner {
            net,
            averaging,
            scalars,
            dropout: None,
            groups,
            optimizers,
            label_smoothing: config.label_smoothing,
            steps: 0,
            frozen: BTreeSet::new(),
            total_steps: steps_per_epoch * config.epochs,
            world: Arc::new(Local),
            batch_norm_sync: None,
            comm_seconds: 0.0,
        })
    }

    /// Trains as one rank of `world`: gradients are averaged over the ranks before each update
    /// and BatchNorm's running statistics become rank 0's at [`Learner::sync_statistics`]; with
    /// `sync_bn` (and more than one rank), BatchNorm normalises with the whole global batch's
    /// statistics.
    pub fn set_world(&mut self, world: Arc<dyn Collective>, sync_bn: bool) {
        self.batch_norm_sync = (sync_bn && world.size() > 1).then(|| world.clone());
        self.world = world;
    }

    /// Seconds spent averaging and broadcasting since the last call.
    pub fn take_comm_seconds(&mut self) -> f64 {
        std::mem::take(&mut self.comm_seconds)
    }

    /// Every variable (and the EMA's) and momentum buffer becomes rank 0's: the ranks start
    /// from one state.
    pub fn broadcast_from_main(&mut self) -> Result<()> {
        if self.world.size() == 1 {
            return Ok(());
        }
        let mut vars = self.net.vars();
        if let Some(copy) = self.averaging.copy() {
            vars.extend(copy.vars());
        }
        broadcast_vars(self.world.as_ref(), &vars)?;
        let momentum = self.momentum_tensors();
        let buffers: Vec<Tensor> = momentum.values().cloned().collect();
        let refreshed = self.world.broadcast_tensors(&buffers, 0)?;
        self.set_momentum_tensors(momentum.into_keys().zip(refreshed).collect())?;
        Ok(())
    }

    /// Stops with an error naming `what` unless every rank holds the same weights, EMA and
    /// momentum (a fingerprint of each compared across the ranks; nothing to do alone).
    pub fn check_ranks_identical(&self, what: &str) -> Result<()> {
        if self.world.size() > 1 {
            crate::dist::check_identical(self.world.as_ref(), self.fingerprint()?, what)?;
        }
        Ok(())
    }

    /// A fingerprint of every variable, the EMA's and the momentum buffers (what ranks compare).
    fn fingerprint(&self) -> Result<u64> {
        let mut tensors: Vec<Tensor> = self
            .net
            .vars()
            .iter()
            .map(|v| v.as_tensor().clone())
            .collect();
        if let Some(copy) = self.averaging.copy() {
            tensors.extend(copy.vars().iter().map(|v| v.as_tensor().clone()));
        }
        tensors.extend(self.momentum_tensors().into_values());
        Ok(crate::dist::fingerprint_tensors(&tensors)?)
    }

    /// Averages `grads` over the ranks ([`Collective::average`]: the identity for a lone
    /// process; a one-GPU NCCL job still runs its device all-reduce, untimed).
    fn average_gradients(&mut self, grads: &mut GradStore) -> Result<()> {
        let timed = self.world.size() > 1;
        let _span = timed.then(|| tracing::info_span!("allreduce").entered());
        let started = Instant::now();
        let trained: Vec<Var> = self.trained().map(|p| p.var.clone()).collect();
        let with_grads: Vec<(&Var, Tensor)> = trained
            .iter()
            .filter_map(|v| grads.get(v).map(|g| (v, g.clone())))
            .collect();
        let tensors: Vec<Tensor> = with_grads.iter().map(|(_, g)| g.clone()).collect();
        let averaged = self.world.average(&tensors)?;
        for ((var, _), g) in with_grads.iter().zip(averaged) {
            grads.insert(var.as_tensor(), g);
        }
        if timed {
            self.comm_seconds += started.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// BatchNorm's running statistics, and the EMA's copies of them, become rank 0's. Training
    /// only writes them (each batch normalises with its own statistics), so between syncs each
    /// rank's follow its own batches; they must agree where they are read: evaluation and the
    /// weights' fingerprint, after each epoch. Rank 0's never change here, so they, and the
    /// checkpoints it writes, are what a broadcast every step would give.
    pub fn sync_statistics(&mut self) -> Result<()> {
        if self.world.size() == 1 {
            return Ok(());
        }
        let _span = tracing::info_span!("allreduce").entered();
        let started = Instant::now();
        let mut stats = statistics(&self.net);
        if let Some(copy) = self.averaging.copy() {
            stats.extend(statistics(copy));
        }
        broadcast_vars(self.world.as_ref(), &stats)?;
        self.comm_seconds += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// One training step where the schedule gives rate `lr`, dropout drawn from
    /// `dropout_seed`: [`Learner::stage`], [`Learner::body`], [`Learner::finish_step`].
    /// Returns `(logits, loss)`.
    pub fn step(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        lr: f64,
        dropout_seed: u64,
    ) -> Result<(Tensor, Tensor)> {
        self.stage(lr, dropout_seed, x.dim(0)?)?;
        let out = self.body(x, y)?;
        self.finish_step()?;
        Ok(out)
    }

    /// The host's work before a step of `batch` images: each group's rate and the EMA's decay
    /// into the scalar buffer, the dropout mask into its buffer. Both are written in place, so
    /// the step that follows reads them where every step does.
    pub fn stage(&mut self, lr: f64, dropout_seed: u64, batch: usize) -> Result<()> {
        let ema_decay = self.averaging.ema_decay(self.steps);
        self.scalars
            .write(&self.groups.scalars(lr, self.steps, ema_decay))?;
        if let Some((p, width)) = self.net.model.dropout() {
            let device = self.net.model.device().clone();
            // Sized by the first step (training batches all have one size: the last, short
            // one is dropped).
            if self
                .dropout
                .as_ref()
                .is_none_or(|m| m.dims() != [batch, width])
            {
                self.dropout = Some(Var::zeros((batch, width), DType::F32, &device)?);
            }
            let values = crate::model::dropout_mask(p, dropout_seed, batch * width);
            let host = Tensor::from_vec(values, (batch, width), &device)?;
            self.dropout.as_ref().expect("allocated above").set(&host)?;
        }
        Ok(())
    }

    /// Each parameter group's name and rate at step `t` (0-based) under schedule rate `lr`, as
    /// [`Learner::stage`] computes them (a group whose role repeats is numbered).
    pub fn group_rates(&self, lr: f64, t: usize) -> Vec<(String, f64)> {
        let rates = self.groups.scalars(lr, t, None).rates;
        let groups = self.groups.groups();
        let mut names: Vec<String> = groups.iter().map(|g| g.role.name().to_string()).collect();
        for i in 0..names.len() {
            if names.iter().filter(|n| **n == names[i]).count() > 1 {
                names[i] = format!("{}_{i}", groups[i].role.name());
            }
        }
        names.into_iter().zip(rates).collect()
    }

    /// The step itself, on what [`Learner::stage`] wrote: forward (dropout from the staged
    /// mask), cross-entropy (with the run's label smoothing), backward, gradient averaging, the
    /// optimizers, the EMA. What a captured graph holds: it reads nothing back to the host.
    /// Returns `(logits, loss)`; each phase is one tracing span (the EMA belongs to
    /// `optimizer`).
    pub fn body(&mut self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        let (logits, loss) = {
            let _f = tracing::info_span!("forward").entered();
            let mask = self.dropout.as_ref();
            let mode = Mode::Train {
                dropout: match mask {
                    Some(mask) => Dropout::Mask(mask.as_tensor()),
                    // No dropout in this network: the seed is never read.
                    None => Dropout::Seed(0),
                },
                batch_norm_sync: self.batch_norm_sync.as_ref(),
            };
            let logits = self.net.model.forward(x, mode)?;
            let loss = super::loss::cross_entropy(&logits, y, self.label_smoothing)?;
            (logits, loss)
        };
        let mut grads = {
            let _b = tracing::info_span!("backward").entered();
            loss.backward()?
        };
        self.average_gradients(&mut grads)?;
        let _o = tracing::info_span!("optimizer").entered();
        let ema = self.averaging.ema_step();
        let mut done = HashSet::new();
        for optimizer in &mut self.optimizers {
            done.extend(optimizer.step(&grads, &self.scalars, ema.as_ref())?);
        }
        // The EMA after every optimizer has moved its weights.
        if ema.is_some() {
            self.averaging.finish_ema(&self.scalars, &done)?;
        }
        Ok((logits, loss))
    }

    /// The host's work after a step: the step count, and lookahead's pull when one is due
    /// (every few steps, so outside the step).
    pub fn finish_step(&mut self) -> Result<()> {
        self.steps += 1;
        self.averaging.after_step(self.steps, self.total_steps)?;
        Ok(())
    }

    /// Freezes what the architecture leaves alone in epoch `epoch` (0-based) and only that:
    /// call it before the epoch's steps (the [`Trainer`](super::Trainer) does at every epoch,
    /// resumed or not).
    pub fn freeze_for_epoch(&mut self, epoch: usize) {
        let frozen = self.groups.frozen_in(epoch);
        for optimizer in &mut self.optimizers {
            optimizer.set_frozen(frozen.clone());
        }
        self.net.model.set_frozen(&|name| frozen.contains(name));
        self.frozen = frozen;
    }

    /// The parameters frozen in the current epoch (part of what a captured step depends on).
    pub fn frozen(&self) -> &BTreeSet<String> {
        &self.frozen
    }

    /// Optimizer steps taken (including those before a resume).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Everything a step changes, as named tensors (shared handles, not copies): the weights
    /// under [`Part::Model`], the EMA's under [`Part::Ema`], the momentum buffers under
    /// [`Part::Momentum`]. With [`Learner::steps`] it is all a resume needs.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = self.net.state(Part::Model.prefix());
        if let Some(copy) = self.averaging.copy() {
            out.extend(copy.state(Part::Ema.prefix()));
        }
        let momentum = Part::Momentum.prefix();
        out.extend(
            self.momentum_tensors()
                .into_iter()
                .map(|(n, t)| (format!("{momentum}{n}"), t)),
        );
        out
    }

    /// Puts back a [`Learner::state`] taken after `steps` steps. A state without an EMA (a run
    /// that kept none) restarts this learner's EMA from the weights.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: usize,
    ) -> std::result::Result<(), StateError> {
        self.net.load_state(tensors, Part::Model.prefix())?;
        if let Some(copy) = self.averaging.copy() {
            let prefix = Part::Ema.prefix();
            if tensors.keys().any(|k| k.starts_with(prefix)) {
                copy.load_state(tensors, prefix)?;
            } else {
                self.averaging
                    .restart()
                    .map_err(|source| StateError::Mismatch {
                        name: prefix.to_string(),
                        source,
                    })?;
            }
        }
        let prefix = Part::Momentum.prefix();
        let buffers = tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(prefix).map(|n| (n.to_string(), t.clone())))
            .collect();
        self.set_momentum_tensors(buffers)
            .map_err(|source| StateError::Mismatch {
                name: prefix.to_string(),
                source,
            })?;
        self.steps = steps;
        Ok(())
    }

    /// The variables the optimizers update: SGD's, then Muon's, each in name order.
    fn trained(&self) -> impl Iterator<Item = &super::optim::Param> {
        self.optimizers.iter().flat_map(|o| o.params())
    }

    /// Every optimizer's momentum buffers, by parameter name (the names are disjoint).
    fn momentum_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut all = BTreeMap::new();
        for optimizer in &self.optimizers {
            all.extend(optimizer.momentum());
        }
        all
    }

    /// Copies each buffer into the optimizer that updates its parameter (a buffer for a
    /// parameter none of them trains is ignored, as it always was).
    fn set_momentum_tensors(
        &mut self,
        mut buffers: BTreeMap<String, Tensor>,
    ) -> candle_core::Result<()> {
        for optimizer in &mut self.optimizers {
            let names: BTreeSet<&str> =
                optimizer.params().iter().map(|p| p.name.as_str()).collect();
            let (mine, rest) = buffers
                .into_iter()
                .partition(|(n, _)| names.contains(n.as_str()));
            optimizer.set_momentum(mine)?;
            buffers = rest;
        }
        Ok(())
    }

    /// Everything that lives across steps, by name: [`Learner::state`] with every momentum
    /// buffer, the scalar buffer and the dropout mask's (what the capture check holds in place).
    pub fn persistent(&self) -> Vec<(String, Tensor)> {
        let mut out = self.state();
        out.push(("scalars".into(), self.scalars.buffer().clone()));
        if let Some(mask) = &self.dropout {
            out.push(("dropout.mask".into(), mask.as_tensor().clone()));
        }
        out
    }

    /// The first tensor of [`Learner::state`] (by name) holding a NaN or an infinity, if any:
    /// one device read for all of them.
    pub fn first_non_finite(&self) -> Result<Option<String>> {
        let state = self.state();
        let named = state.iter().map(|(n, t)| (n.as_str(), t));
        Ok(super::finite::first_non_finite(named)?)
    }

    /// Whether the learner keeps an EMA of its weights.
    pub fn has_ema(&self) -> bool {
        self.averaging.delivered().is_some()
    }

    /// The live (raw) network.
    pub fn model(&self) -> &Network {
        &self.net.model
    }

    /// The EMA network, when the run keeps one.
    pub fn ema_model(&self) -> Option<&Network> {
        self.averaging.delivered()
    }

    /// The whitened net's first layer, if this learner trains one: its filters come from the
    /// training images (`images`: `n` normalised CHW images of `shape`), in the live weights
    /// and their averaged copy. A resumed run keeps its saved filters instead.
    pub fn whiten_from(&self, images: &[f32], shape: (usize, usize, usize)) -> Result<()> {
        let Some(net) = self.net.model.as_whitened() else {
            return Ok(());
        };
        let filters = net.whitening_for(images, shape)?;
        net.set_whitening(&filters)?;
        if let Some(twin) = self.averaging.copy().and_then(|c| c.model.as_whitened()) {
            twin.set_whitening(&filters)?;
        }
        Ok(())
    }
}

/// `net`'s BatchNorm running statistics.
fn statistics(net: &Net) -> Vec<Var> {
    let named = net.named();
    let labelled = roles(named.iter().map(|(n, v)| (n.as_str(), v.rank())));
    labelled
        .into_iter()
        .zip(&named)
        .filter(|((_, role), _)| *role == Role::RunningStatistic)
        .map(|(_, (_, v))| v.clone())
        .collect()
}

/// The variables become rank 0's.
fn broadcast_vars(world: &dyn Collective, vars: &[Var]) -> Result<()> {
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    for (v, t) in vars.iter().zip(world.broadcast_tensors(&tensors, 0)?) {
        v.set(&t)?;
    }
    Ok(())
}
