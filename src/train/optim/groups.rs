//! Parameter groups: the network's variables, by the role the model gives them, each group with
//! one rule for its rate, one weight decay, one optimizer and one span of epochs it trains in.
//! Built once per learner; the step's rates come from [`Groups::scalars`].

use candle_core::Var;

use super::{Param, StepScalars};
use crate::model::{roles, Role, Trains};
use crate::train::config::TrainConfig;

/// How a group's rate follows the schedule's rate `lr` at step `t`. The f64 formulas are the
/// ones every run used before the groups existed, so the rounded f32 values are the same.
#[derive(Clone, Debug, PartialEq)]
pub enum RateRule {
    /// `lr · factor`.
    Scaled {
        /// The factor.
        factor: f64,
    },
    /// `peak · (lr / base)`: its own peak, following the schedule's shape (Muon's).
    Relative {
        /// The rate at the schedule's peak.
        peak: f64,
    },
    /// Its own line from the schedule's peak `base` to zero over `over` steps, whatever the
    /// schedule does meanwhile, times `factor` (airbench94_muon's whitening bias):
    /// `(lr · (own / lr)) · factor` with `own = base · max(1 − t/over, 0)`, 0 where `lr ≤ 0`.
    TaperToZero {
        /// Steps to reach zero.
        over: usize,
        /// The factor.
        factor: f64,
    },
}

impl RateRule {
    /// The rate at step `t` (0-based, global) where the schedule gives `lr` and peaks at `base`.
    pub fn rate(&self, lr: f64, base: f64, t: usize) -> f64 {
        match *self {
            RateRule::Scaled { factor } => lr * factor,
            RateRule::Relative { peak } => peak * (lr / base),
            RateRule::TaperToZero { over, factor } => {
                let own = base * (1.0 - t as f64 / over.max(1) as f64).max(0.0);
                let step = if lr > 0.0 { own / lr } else { 0.0 };
                (lr * step) * factor
            }
        }
    }
}

/// Which optimizer steps a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stepper {
    /// SGD (momentum, Nesterov, L2 decay).
    Sgd,
    /// Muon (filter banks).
    Muon,
}

/// One group: the parameters of one role.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// What its parameters are.
    pub role: Role,
    /// Its rate.
    pub rule: RateRule,
    /// Its L2 weight decay (added to the gradient by SGD).
    pub weight_decay: f64,
    /// Which optimizer steps it.
    pub stepper: Stepper,
    /// When it trains.
    pub trains: Trains,
}

/// The groups of one network and the parameters in each.
#[derive(Clone, Debug)]
pub struct Groups {
    groups: Vec<Group>,
    params: Vec<Param>,
    /// The schedule's peak rate (what [`RateRule::Relative`] and the taper measure against).
    base_lr: f64,
}

impl Groups {
    /// The groups of `named` (a network's variables in name order) under `config`'s optimizer
    /// settings, with `steps_per_epoch` for rules counted in epochs. Variables the architecture
    /// never trains and running statistics belong to none.
    pub fn new(config: &TrainConfig, named: &[(String, Var)], steps_per_epoch: usize) -> Groups {
        let labelled = roles(named.iter().map(|(n, v)| (n.as_str(), v.rank())));
        let mut groups: Vec<Group> = Vec::new();
        let mut params = Vec::new();
        for ((name, role), (_, var)) in labelled.into_iter().zip(named) {
            let trains = config.model.trains(name);
            if !role.is_parameter() || trains == Trains::Never {
                continue;
            }
            let group = group_of(config, role, trains, var.rank(), steps_per_epoch);
            let index = match groups.iter().position(|g| *g == group) {
                Some(i) => i,
                None => {
                    groups.push(group);
                    groups.len() - 1
                }
            };
            params.push(Param {
                name: name.to_string(),
                var: var.clone(),
                group: index,
            });
        }
        Groups {
            groups,
            params,
            base_lr: config.schedule.lr,
        }
    }

    /// The groups, by index.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The parameters stepped by `stepper`, in name order.
    pub fn params_of(&self, stepper: Stepper) -> Vec<Param> {
        self.params
            .iter()
            .filter(|p| self.groups[p.group].stepper == stepper)
            .cloned()
            .collect()
    }

    /// Every trained parameter, in name order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The names of the parameters left alone in epoch `epoch` (0-based).
    pub fn frozen_in(&self, epoch: usize) -> std::collections::BTreeSet<String> {
        self.params
            .iter()
            .filter(|p| self.groups[p.group].trains.frozen_in(epoch))
            .map(|p| p.name.clone())
            .collect()
    }

    /// The scalars of global step `t` where the schedule gives `lr`, with the EMA's decay.
    pub fn scalars(&self, lr: f64, t: usize, ema_decay: Option<f64>) -> StepScalars {
        StepScalars {
            rates: self
                .groups
                .iter()
                .map(|g| g.rule.rate(lr, self.base_lr, t))
                .collect(),
            ema_decay,
        }
    }
}

/// The group a parameter of `role` (of `rank` dimensions) belongs to.
fn group_of(
    config: &TrainConfig,
    role: Role,
    trains: Trains,
    rank: usize,
    steps_per_epoch: usize,
) -> Group {
    let o = &config.optim;
    if let (Some(muon), Role::Filters) = (&o.muon, role) {
        return Group {
            role,
            rule: RateRule::Relative { peak: muon.lr },
            weight_decay: 0.0,
            stepper: Stepper::Muon,
            trains,
        };
    }
    // BatchNorm scales and shifts and every bias are the one-dimensional parameters.
    let decay = if o.no_decay_bn_bias && rank <= 1 {
        0.0
    } else {
        o.weight_decay
    };
    let rule = match role {
        Role::NormShift => RateRule::Scaled {
            factor: o.bn_bias_rate_factor,
        },
        Role::WhitenBias => match (o.whiten_bias_to_zero, trains) {
            (true, Trains::Until(epochs)) => RateRule::TaperToZero {
                over: (epochs * steps_per_epoch as f64).ceil() as usize,
                factor: o.whiten_bias_rate_factor,
            },
            _ => RateRule::Scaled {
                factor: o.whiten_bias_rate_factor,
            },
        },
        _ => RateRule::Scaled { factor: 1.0 },
    };
    // A faster rate comes with a weaker decay: the product of the two stays the schedule's.
    let weight_decay = match rule {
        RateRule::Scaled { factor } | RateRule::TaperToZero { factor, .. } => decay / factor,
        RateRule::Relative { .. } => decay,
    };
    Group {
        role,
        rule,
        weight_decay,
        stepper: Stepper::Sgd,
        trains,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Architecture;
    use crate::train::Net;
    use candle_core::Device;

    fn groups_of(config: &TrainConfig, steps_per_epoch: usize) -> Groups {
        let net = Net::new(config, &Device::Cpu).unwrap();
        Groups::new(config, &net.named(), steps_per_epoch)
    }

    /// airbench94_muon's recipe: Muon on the filters, the shifts 64× faster with less decay,
    /// the whitening bias tapering to zero over its epochs then frozen, nothing for the fixed
    /// scales and filters.
    #[test]
    fn fast_cpu_groups_follow_the_recipe() {
        let config = TrainConfig::preset("fast-cpu").unwrap();
        let groups = groups_of(&config, 10);
        let of = |role| groups.groups().iter().find(|g| g.role == role).unwrap();
        assert_eq!(of(Role::Filters).stepper, Stepper::Muon);
        let o = &config.optim;
        let shift = of(Role::NormShift);
        assert_eq!(
            shift.rule,
            RateRule::Scaled {
                factor: o.bn_bias_rate_factor
            }
        );
        assert_eq!(shift.weight_decay, o.weight_decay / o.bn_bias_rate_factor);
        let Architecture::Whitened(w) = &config.model else {
            panic!("fast-cpu is the whitened net")
        };
        let over = (w.whiten_bias_epochs * 10.0).ceil() as usize;
        assert_eq!(
            of(Role::WhitenBias).rule,
            RateRule::TaperToZero {
                over,
                factor: o.whiten_bias_rate_factor
            }
        );
        let roles: Vec<Role> = groups.groups().iter().map(|g| g.role).collect();
        for fixed in [Role::NormScale, Role::WhitenFilters, Role::RunningStatistic] {
            assert!(!roles.contains(&fixed), "{fixed:?} in {roles:?}");
        }
        let last = w.whiten_bias_epochs.ceil() as usize;
        assert!(groups.frozen_in(last - 1).is_empty());
        assert_eq!(groups.frozen_in(last), ["whiten.bias".to_string()].into());
    }

    /// The report's network with `no_decay_bn_bias`: one SGD group per role, the
    /// one-dimensional ones without decay, every parameter in one group.
    #[test]
    fn se_resnet_d_groups_decay_only_matrices_without_decay_on_norms_and_biases() {
        let mut config = TrainConfig::preset("tiny").unwrap();
        config.optim.no_decay_bn_bias = true;
        let groups = groups_of(&config, 10);
        for g in groups.groups() {
            assert_eq!(g.stepper, Stepper::Sgd);
            let matrix = matches!(g.role, Role::Filters | Role::HeadWeight);
            let want = if matrix {
                config.optim.weight_decay
            } else {
                0.0
            };
            assert_eq!(g.weight_decay, want, "{:?}", g.role);
        }
        let net = Net::new(&config, &Device::Cpu).unwrap();
        let trained = net
            .named()
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .count();
        assert_eq!(groups.params().len(), trained);
        assert_eq!(
            groups.scalars(0.1, 0, None).rates.len(),
            groups.groups().len()
        );
    }

    #[test]
    fn the_rules_keep_their_formulas() {
        let scaled = RateRule::Scaled { factor: 64.0 };
        assert_eq!(scaled.rate(0.01, 0.02, 5), 0.01 * 64.0);
        let muon = RateRule::Relative { peak: 0.24 };
        assert_eq!(muon.rate(0.01, 0.02, 5), 0.24 * (0.01 / 0.02));
        let taper = RateRule::TaperToZero {
            over: 10,
            factor: 2.0,
        };
        let own = 0.02 * (1.0 - 4.0 / 10.0);
        assert_eq!(taper.rate(0.01, 0.02, 4), (0.01 * (own / 0.01)) * 2.0);
        assert_eq!(taper.rate(0.01, 0.02, 10), 0.0);
        assert_eq!(taper.rate(0.0, 0.02, 1), 0.0);
    }
}
