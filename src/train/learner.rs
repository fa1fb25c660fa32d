//! What one training step changes: the weights, their EMA and the optimizer's momentum; in
//! data-parallel training, also the averaging of gradients over the ranks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use super::ema::Ema;
use super::error::{Result, StateError};
use super::muon::Muon;
use super::net::Net;
use super::sgd::Sgd;
use crate::dist::{Collective, Local};
use crate::model::{is_running_statistic, Architecture, Mode, Network, WHITEN_BIAS};
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

/// The network being trained, its exponential moving average (when the run keeps one) and the
/// SGD state, stepped one batch at a time. It knows nothing of data, schedules or files: the
/// [`Trainer`](super::Trainer) feeds it, `step-bench` times it, and a checkpoint stores its
/// [`Learner::state`].
pub struct Learner {
    net: Net,
    /// The EMA of the weights, or with lookahead the slow copy (updated only by
    /// [`Learner::pull_lookahead`]).
    ema: Option<(Net, Ema)>,
    lookahead: bool,
    sgd: Sgd,
    /// Muon over the filter banks, when the run uses it (SGD then has the rest).
    muon: Option<Muon>,
    /// The schedule's peak rate: Muon steps at its own rate times `lr / base_lr`.
    base_lr: f64,
    /// With `optim.whiten_bias_to_zero`, the steps over which the whitening bias's rate falls
    /// to zero (set by [`Learner::taper_whiten_bias`]).
    whiten_taper: Option<usize>,
    /// What decides which variables train in which epoch.
    arch: Architecture,
    label_smoothing: f64,
    steps: usize,
    /// The optimizer and EMA run as fused kernels (CUDA with the fast kernels).
    fused: bool,
    /// The ranks whose gradients are averaged (a lone process: [`Local`]).
    world: Arc<dyn Collective>,
    /// The ranks BatchNorm's training statistics are synchronised over (`--sync-bn`).
    batch_norm_sync: Option<Arc<dyn Collective>>,
    /// Seconds spent in collectives since the last [`Learner::take_comm_seconds`].
    comm_seconds: f64,
}

impl Learner {
    /// Fresh weights (seeded by `config.seed`), an EMA copy when `config.ema_decay > 0`, and an
    /// optimizer with empty momentum buffers.
    pub fn new(config: &TrainConfig, device: &Device) -> Result<Learner> {
        let net = Net::new(config, device)?;
        // SGD over the trainable variables: not the BatchNorm statistics, nor what the
        // architecture keeps fixed.
        let params: Vec<(String, Var)> = net
            .named()
            .into_iter()
            .filter(|(n, _)| !is_running_statistic(n) && !config.model.is_frozen(n))
            .collect();
        // BatchNorm shifts: the biases beside running statistics.
        let names: BTreeSet<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        let shifts: BTreeSet<String> = net
            .named()
            .into_iter()
            .filter_map(|(n, _)| {
                let layer = n.strip_suffix(".running_mean")?;
                let bias = format!("{layer}.bias");
                names.contains(bias.as_str()).then_some(bias)
            })
            .collect();
        let whiten_bias: BTreeSet<String> = names
            .contains(WHITEN_BIAS)
            .then(|| WHITEN_BIAS.to_string())
            .into_iter()
            .collect();
        // With Muon, the filter banks (rank 4) are its; SGD keeps the rest.
        let (banks, params): (Vec<_>, Vec<_>) = params
            .into_iter()
            .partition(|(_, v)| config.optim.muon.is_some() && v.rank() == 4);
        let muon = config
            .optim
            .muon
            .clone()
            .map(|settings| Muon::new(banks, settings));
        let sgd = Sgd::new(
            params,
            config.optim.momentum,
            config.optim.nesterov,
            config.optim.weight_decay,
            config.optim.no_decay_bn_bias,
        )
        .with_rate_factor(shifts, config.optim.bn_bias_rate_factor)
        .with_rate_factor(whiten_bias, config.optim.whiten_bias_rate_factor);
        let lookahead = config.lookahead.is_some();
        let ema = if config.ema_decay > 0.0 || lookahead {
            let copy = Net::new(config, device)?;
            let ema = Ema::new(config.ema_decay, copy.vars(), net.vars())?;
            Some((copy, ema))
        } else {
            None
        };
        Ok(Learner {
            net,
            ema,
            lookahead,
            sgd,
            muon,
            base_lr: config.schedule.lr,
            whiten_taper: None,
            arch: config.model.clone(),
            label_smoothing: config.label_smoothing,
            steps: 0,
            fused: config.kernels == crate::ops::Kernels::Fast,
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
        if let Some((ema, _)) = &self.ema {
            vars.extend(ema.vars());
        }
        broadcast_vars(self.world.as_ref(), &vars)?;
        let momentum = self.momentum_tensors();
        let buffers: Vec<Tensor> = momentum.values().cloned().collect();
        let refreshed = self.world.broadcast_tensors(&buffers, 0)?;
        self.set_momentum_tensors(momentum.into_keys().zip(refreshed).collect());
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
        if let Some((ema, _)) = &self.ema {
            tensors.extend(ema.vars().iter().map(|v| v.as_tensor().clone()));
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
        let trained: Vec<Var> = self.trained().map(|(_, v)| v.clone()).collect();
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
        if let Some((ema, _)) = &self.ema {
            stats.extend(statistics(ema));
        }
        broadcast_vars(self.world.as_ref(), &stats)?;
        self.comm_seconds += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// One training step: forward with dropout drawn from `dropout_seed`, cross-entropy (with
    /// the run's label smoothing), backward, SGD update at rate `lr`, then the EMA update
    /// numbered by the steps taken so far. Returns `(logits, loss)`; each phase is one tracing
    /// span (the EMA belongs to `optimizer`).
    pub fn step(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        lr: f64,
        dropout_seed: u64,
    ) -> Result<(Tensor, Tensor)> {
        let (logits, loss) = {
            let _f = tracing::info_span!("forward").entered();
            let mode = Mode::Train {
                dropout_seed,
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
        if let Some(over) = self.whiten_taper {
            // Its own line from the schedule's peak to zero, as a factor on this step's rate.
            let own = self.base_lr * (1.0 - self.steps as f64 / over.max(1) as f64).max(0.0);
            let factor = if lr > 0.0 { own / lr } else { 0.0 };
            self.sgd.set_step_factor(WHITEN_BIAS, factor);
        }
        let _o = tracing::info_span!("optimizer").entered();
        let ema = match &self.ema {
            Some((_, ema)) if !self.lookahead => Some((ema, self.steps)),
            _ => None,
        };
        match &mut self.muon {
            None => self.sgd.step_with_ema(&grads, lr, ema, self.fused)?,
            Some(muon) => {
                // The EMA after both optimizers have moved their weights.
                self.sgd.step_with_ema(&grads, lr, None, self.fused)?;
                muon.step(&grads, lr / self.base_lr)?;
                if let Some((ema, t)) = ema {
                    ema.update(t)?;
                }
            }
        }
        drop(_o);
        self.steps += 1;
        Ok((logits, loss))
    }

    /// The whitening bias's rate falls linearly from the schedule's peak to zero over `steps`
    /// steps (airbench94_muon's), whatever the run's schedule does meanwhile.
    pub fn taper_whiten_bias(&mut self, steps: usize) {
        self.whiten_taper = Some(steps);
    }

    /// Freezes what the architecture leaves alone in epoch `epoch` (0-based) and only that:
    /// call it before the epoch's steps (the [`Trainer`](super::Trainer) does at every epoch,
    /// resumed or not).
    pub fn freeze_for_epoch(&mut self, epoch: usize) {
        let frozen: BTreeSet<String> = self
            .trained()
            .filter(|(n, _)| self.arch.is_frozen_in(n, epoch))
            .map(|(n, _)| n.clone())
            .collect();
        if let Some(muon) = &mut self.muon {
            muon.set_frozen(frozen.clone());
        }
        self.sgd.set_frozen(frozen);
        let arch = &self.arch;
        self.net
            .model
            .set_frozen(&|name| arch.is_frozen_in(name, epoch));
    }

    /// With lookahead, pulls the live weights and the slow copy together with the slow copy's
    /// weight `decay` ([`Ema::pull`]); nothing to do without lookahead.
    pub fn pull_lookahead(&mut self, decay: f64) -> Result<()> {
        if let (true, Some((_, ema))) = (self.lookahead, &self.ema) {
            let _o = tracing::info_span!("optimizer").entered();
            ema.pull(decay)?;
        }
        Ok(())
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
        if let Some((ema, _)) = &self.ema {
            out.extend(ema.state(Part::Ema.prefix()));
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
        if let Some((ema_net, ema)) = &self.ema {
            let prefix = Part::Ema.prefix();
            if tensors.keys().any(|k| k.starts_with(prefix)) {
                ema_net.load_state(tensors, prefix)?;
            } else {
                ema.restart().map_err(|source| StateError::Mismatch {
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
        self.set_momentum_tensors(buffers);
        self.steps = steps;
        Ok(())
    }

    /// The variables the optimizers update, by name: SGD's, then Muon's.
    fn trained(&self) -> impl Iterator<Item = &(String, Var)> {
        let banks = self.muon.as_ref().map(|m| m.params()).unwrap_or_default();
        self.sgd.params().iter().chain(banks)
    }

    /// Both optimizers' momentum buffers, by parameter name (the names are disjoint).
    fn momentum_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut all = self.sgd.momentum_tensors().clone();
        if let Some(muon) = &self.muon {
            all.extend(muon.momentum_tensors().clone());
        }
        all
    }

    /// Hands each buffer to the optimizer that updates its parameter.
    fn set_momentum_tensors(&mut self, buffers: BTreeMap<String, Tensor>) {
        let Some(muon) = &mut self.muon else {
            self.sgd.set_momentum_tensors(buffers);
            return;
        };
        let banks: BTreeSet<&str> = muon.params().iter().map(|(n, _)| n.as_str()).collect();
        let (mine, rest) = buffers
            .into_iter()
            .partition(|(n, _)| banks.contains(n.as_str()));
        muon.set_momentum_tensors(mine);
        self.sgd.set_momentum_tensors(rest);
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
        self.ema.is_some() && !self.lookahead
    }

    /// The live (raw) network.
    pub fn model(&self) -> &Network {
        &self.net.model
    }

    /// The EMA network, when the run keeps one.
    pub fn ema_model(&self) -> Option<&Network> {
        self.ema
            .as_ref()
            .filter(|_| !self.lookahead)
            .map(|(net, _)| &net.model)
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
        if let Some(twin) = self.ema.as_ref().and_then(|(c, _)| c.model.as_whitened()) {
            twin.set_whitening(&filters)?;
        }
        Ok(())
    }
}

/// `net`'s BatchNorm running statistics.
fn statistics(net: &Net) -> Vec<Var> {
    net.named()
        .into_iter()
        .filter(|(n, _)| is_running_statistic(n))
        .map(|(_, v)| v)
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
