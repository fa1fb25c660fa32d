//! Every value of a [`TrainConfig`] checked in one place, whatever set it (preset, TOML file,
//! flag, library caller): each rule names its key as `config.toml` spells it and the range it
//! allows. Nothing downstream asserts on a value a user controls.

use super::{Error, TrainConfig};
use crate::train::schedule::ScheduleKind;

/// Largest batch, evaluation batch or prefetch depth accepted (a typo guard, not a tuning).
const MAX_BATCH: usize = 1 << 16;

/// One rule's outcome: `Err` names the key and says what is allowed.
fn rule(ok: bool, key: &'static str, message: impl FnOnce() -> String) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            key,
            message: message(),
        })
    }
}

/// `x` is finite and in `[lo, hi]`.
fn within(x: f64, lo: f64, hi: f64) -> bool {
    x.is_finite() && x >= lo && x <= hi
}

/// `x` is finite and in `[lo, hi)`.
fn below(x: f64, lo: f64, hi: f64) -> bool {
    x.is_finite() && x >= lo && x < hi
}

impl TrainConfig {
    /// Checks that every value is in range; the first that is not is the error.
    pub fn validate(&self) -> Result<(), Error> {
        let c = self;
        rule(
            !c.name.is_empty() && !c.name.contains(['/', '\\']),
            "name",
            || format!("{:?} must be a non-empty folder name (no slashes)", c.name),
        )?;
        rule((1..=1_000_000).contains(&c.epochs), "epochs", || {
            format!("{} must be 1 to 1000000", c.epochs)
        })?;
        rule(
            (1..=MAX_BATCH).contains(&c.batch_size),
            "batch_size",
            || format!("{} must be 1 to {MAX_BATCH}", c.batch_size),
        )?;
        rule(
            (1..=MAX_BATCH).contains(&c.eval_batch_size),
            "eval_batch_size",
            || format!("{} must be 1 to {MAX_BATCH}", c.eval_batch_size),
        )?;
        rule((1..=1024).contains(&c.prefetch), "prefetch", || {
            format!("{} must be 1 to 1024", c.prefetch)
        })?;
        rule(c.threads <= 1024, "threads", || {
            format!("{} must be 0 (one per core) to 1024", c.threads)
        })?;
        rule(c.eval_every >= 1, "eval_every", || {
            format!("{} must be at least 1", c.eval_every)
        })?;
        rule(c.save_every_steps != Some(0), "save_every_steps", || {
            "0 must be at least 1 (leave it out to save at epoch ends only)".into()
        })?;
        rule(
            c.limit_train_batches != Some(0),
            "limit_train_batches",
            || "0 must be at least 1".into(),
        )?;
        rule(below(c.ema_decay, 0.0, 1.0), "ema_decay", || {
            format!("{} must be in [0, 1) (0 turns the EMA off)", c.ema_decay)
        })?;
        if let Some(l) = &c.lookahead {
            rule(c.ema_decay == 0.0, "lookahead", || {
                format!(
                    "an EMA (ema_decay {}) and lookahead cannot both average the weights: \
                     set ema_decay = 0 or drop [lookahead]",
                    c.ema_decay
                )
            })?;
            rule(l.every >= 1, "lookahead.every", || {
                format!("{} must be at least 1", l.every)
            })?;
            rule(within(l.decay, 0.0, 1.0), "lookahead.decay", || {
                format!("{} must be in [0, 1]", l.decay)
            })?;
        }
        rule(
            rate_factor_ok(c.optim.bn_bias_rate_factor),
            "optim.bn_bias_rate_factor",
            || format!("{} must be in (0, 10000]", c.optim.bn_bias_rate_factor),
        )?;
        rule(
            rate_factor_ok(c.optim.whiten_bias_rate_factor),
            "optim.whiten_bias_rate_factor",
            || format!("{} must be in (0, 10000]", c.optim.whiten_bias_rate_factor),
        )?;
        if let Some(m) = &c.optim.muon {
            rule(
                m.lr.is_finite() && m.lr > 0.0 && m.lr <= 10.0,
                "optim.muon.lr",
                || format!("{} must be in (0, 10]", m.lr),
            )?;
            rule(below(m.momentum, 0.0, 1.0), "optim.muon.momentum", || {
                format!("{} must be in [0, 1)", m.momentum)
            })?;
            rule((1..=10).contains(&m.steps), "optim.muon.steps", || {
                format!("{} must be 1 to 10", m.steps)
            })?;
        }
        rule(
            below(c.label_smoothing, 0.0, 1.0),
            "label_smoothing",
            || format!("label smoothing {} is outside [0, 1)", c.label_smoothing),
        )?;
        c.model
            .validate()
            .map_err(|(key, message)| Error::Invalid { key, message })?;

        let o = &c.optim;
        rule(below(o.momentum, 0.0, 1.0), "optim.momentum", || {
            format!("{} must be in [0, 1)", o.momentum)
        })?;
        rule(
            within(o.weight_decay, 0.0, 1.0),
            "optim.weight_decay",
            || format!("{} must be in [0, 1]", o.weight_decay),
        )?;

        let s = &c.schedule;
        // Up to 10,000: airbench94_muon's head rate, 0.67 per image on a summed loss, is
        // 0.67 · batch on the mean loss this crate trains on (343 at batch 512).
        rule(
            s.lr.is_finite() && s.lr > 0.0 && s.lr <= 10_000.0,
            "schedule.lr",
            || format!("{} must be in (0, 10000]", s.lr),
        )?;
        rule(within(s.min_lr, 0.0, s.lr), "schedule.min_lr", || {
            format!("{} must be in [0, lr = {}]", s.min_lr, s.lr)
        })?;
        rule(
            within(s.warmup_epochs, 0.0, 1e6),
            "schedule.warmup_epochs",
            || format!("{} must be ≥ 0", s.warmup_epochs),
        )?;
        if s.kind == ScheduleKind::Cosine {
            // A zero-length cycle would never end: the schedule would look for it for ever.
            rule(
                s.restart_every.is_finite() && s.restart_every >= 1e-3,
                "schedule.restart_every",
                || format!("{} must be at least 0.001 epochs", s.restart_every),
            )?;
            rule(
                within(s.restart_mult, 1.0, 100.0),
                "schedule.restart_mult",
                || format!("{} must be in [1, 100]", s.restart_mult),
            )?;
        } else {
            rule(
                within(s.gamma, 0.0, 1e6) && s.gamma > 0.0,
                "schedule.gamma",
                || format!("{} must be > 0", s.gamma),
            )?;
            rule(
                s.milestones.iter().all(|&m| within(m, 0.0, 1e6)),
                "schedule.milestones",
                || format!("{:?}: each must be ≥ 0", s.milestones),
            )?;
        }

        let a = &c.augment;
        rule(a.randaugment_n <= 32, "augment.randaugment_n", || {
            format!("{} must be 0 to 32", a.randaugment_n)
        })?;
        rule(a.randaugment_m <= 10, "augment.randaugment_m", || {
            format!("{} must be a level from 0 to 10", a.randaugment_m)
        })?;
        rule(a.crop_padding <= 64, "augment.crop_padding", || {
            format!("{} must be 0 to 64", a.crop_padding)
        })?;
        rule(a.cutout_holes <= 64, "augment.cutout_holes", || {
            format!("{} must be 0 to 64", a.cutout_holes)
        })?;
        rule(
            a.cutout_holes == 0 || (1..=64).contains(&a.cutout_length),
            "augment.cutout_length",
            || format!("{} must be 1 to 64", a.cutout_length),
        )?;
        Ok(())
    }
}

/// A rate factor multiplies the rate and divides the weight decay: positive and finite.
fn rate_factor_ok(f: f64) -> bool {
    f.is_finite() && f > 0.0 && f <= 10_000.0
}
