//! The averaged copy of the weights a run may keep, and which weights it delivers: the one place
//! that knows whether a run has an EMA, a lookahead copy, or neither.

use std::collections::HashSet;

use candle_core::{Device, Result, TensorId, Var};

use super::ema::Ema;
use super::Scalars;
use crate::model::Network;
use crate::train::config::{Lookahead, TrainConfig};
use crate::train::net::Net;

/// Which averaging a configuration asks for (no weights needed to say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The live weights alone.
    None,
    /// An exponential moving average, updated after every step; it is what the run delivers.
    Ema,
    /// airbench's lookahead: a slow copy that pulls the live weights back every few steps; the
    /// live weights are what the run delivers (they equal the slow copy at the end).
    Lookahead,
}

impl Kind {
    /// The averaging `config` asks for (validation keeps an EMA and lookahead apart).
    pub fn of(config: &TrainConfig) -> Kind {
        match (&config.lookahead, config.ema_decay > 0.0) {
            (Some(_), _) => Kind::Lookahead,
            (None, true) => Kind::Ema,
            (None, false) => Kind::None,
        }
    }

    /// Whether the run's delivered weights are the averaged copy (a checkpoint's `ema.` part)
    /// rather than the live ones.
    pub fn delivers_copy(self) -> bool {
        self == Kind::Ema
    }
}

/// This step's EMA update, handed to the optimizers that can fold it into their own pass (its
/// decay is in the step's [`Scalars`]).
pub struct EmaStep<'a> {
    /// `(EMA variable, live variable)` pairs.
    pub pairs: &'a [(Var, Var)],
}

/// The averaged copy a learner keeps, with its rule.
pub enum Averaging {
    /// None.
    None,
    /// An EMA of every variable (BatchNorm statistics included).
    Ema {
        /// The averaged network.
        copy: Net,
        /// Its update.
        ema: Ema,
    },
    /// A lookahead copy, pulled on `schedule`'s steps.
    Lookahead {
        /// The slow network.
        copy: Net,
        /// Its pairs with the live variables (updated only by pulls).
        slow: Ema,
        /// When and how strongly it pulls.
        schedule: Lookahead,
    },
}

impl Averaging {
    /// The averaging of `config` over `live` (the copy starts equal to it).
    pub fn new(
        config: &TrainConfig,
        device: &Device,
        live: &Net,
    ) -> crate::train::Result<Averaging> {
        let kind = Kind::of(config);
        if kind == Kind::None {
            return Ok(Averaging::None);
        }
        let copy = Net::new(config, device)?;
        let pairs = Ema::new(config.ema_decay, copy.vars(), live.vars())?;
        Ok(match (kind, &config.lookahead) {
            (Kind::Lookahead, Some(schedule)) => Averaging::Lookahead {
                copy,
                slow: pairs,
                schedule: schedule.clone(),
            },
            _ => Averaging::Ema { copy, ema: pairs },
        })
    }

    /// The averaged copy, whichever kind (what checkpoints store under `ema.`).
    pub fn copy(&self) -> Option<&Net> {
        match self {
            Averaging::None => None,
            Averaging::Ema { copy, .. } | Averaging::Lookahead { copy, .. } => Some(copy),
        }
    }

    /// The network the run delivers beside the live one: the EMA's (`None` without one).
    pub fn delivered(&self) -> Option<&Network> {
        match self {
            Averaging::Ema { copy, .. } => Some(&copy.model),
            _ => None,
        }
    }

    /// The EMA's decay at global step `t` (0-based), if this averaging updates one each step.
    pub fn ema_decay(&self, t: usize) -> Option<f64> {
        match self {
            Averaging::Ema { ema, .. } => Some(ema.decay_at(t)),
            _ => None,
        }
    }

    /// The EMA update that follows each step, if this averaging makes one.
    pub fn ema_step(&self) -> Option<EmaStep<'_>> {
        match self {
            Averaging::Ema { ema, .. } => Some(EmaStep { pairs: ema.pairs() }),
            _ => None,
        }
    }

    /// Finishes an EMA update the optimizers began ([`Ema::finish`]).
    pub fn finish_ema(&self, scalars: &Scalars, done: &HashSet<TensorId>) -> Result<()> {
        let Averaging::Ema { ema, .. } = self else {
            return Ok(());
        };
        ema.finish(scalars, done)
    }

    /// After step number `steps` (1-based) of `total`: lookahead's pull when one is due.
    pub fn after_step(&self, steps: usize, total: usize) -> Result<()> {
        let Averaging::Lookahead { slow, schedule, .. } = self else {
            return Ok(());
        };
        match schedule.decay_after(steps, total) {
            Some(decay) => {
                let _o = tracing::info_span!("optimizer").entered();
                slow.pull(decay)
            }
            None => Ok(()),
        }
    }

    /// Starts the average again from the live weights (a resumed state that kept none).
    pub fn restart(&self) -> Result<()> {
        match self {
            Averaging::None => Ok(()),
            Averaging::Ema { ema, .. } => ema.restart(),
            Averaging::Lookahead { slow, .. } => slow.restart(),
        }
    }
}
