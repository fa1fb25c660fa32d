//! What each variable of a network is, and when it trains: the labels an optimizer groups
//! parameters by. Names are made here, in `model/`, so only here are they read.

use std::collections::BTreeSet;

/// What a variable is in its network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A convolution's filter bank (rank 4), the squeeze-and-excitation 1×1 ones included.
    Filters,
    /// A convolution's bias (the squeeze-and-excitation layers').
    ConvBias,
    /// A BatchNorm scale (γ).
    NormScale,
    /// A BatchNorm shift (β).
    NormShift,
    /// A BatchNorm running mean or variance: state that training writes, not a parameter.
    RunningStatistic,
    /// The whitening layer's filters (computed from the data, never trained).
    WhitenFilters,
    /// The whitening layer's bias.
    WhitenBias,
    /// The classifier's weight matrix.
    HeadWeight,
    /// The classifier's bias.
    HeadBias,
}

impl Role {
    /// Its name in logs (`filters`, `norm_scale`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Role::Filters => "filters",
            Role::ConvBias => "conv_bias",
            Role::NormScale => "norm_scale",
            Role::NormShift => "norm_shift",
            Role::RunningStatistic => "running_statistic",
            Role::WhitenFilters => "whiten_filters",
            Role::WhitenBias => "whiten_bias",
            Role::HeadWeight => "head_weight",
            Role::HeadBias => "head_bias",
        }
    }

    /// Whether an optimizer ever updates a variable of this role (running statistics are
    /// written by BatchNorm itself).
    pub fn is_parameter(self) -> bool {
        self != Role::RunningStatistic
    }
}

/// When a variable trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trains {
    /// Every epoch.
    Always,
    /// Never: it keeps its initial or data-derived value.
    Never,
    /// In epochs before this one (0-based, fractional: frozen from `epoch >= until`).
    Until(f64),
}

impl Trains {
    /// Whether it is left alone in epoch `epoch` (0-based).
    pub fn frozen_in(self, epoch: usize) -> bool {
        match self {
            Trains::Always => false,
            Trains::Never => true,
            Trains::Until(until) => epoch as f64 >= until,
        }
    }
}

/// Each of `names` (a network's variables) with its role. A `weight`/`bias` is a BatchNorm's
/// when its layer has running statistics beside it; `fc` is the classifier; `whiten` the
/// whitening layer; any other rank-4 weight a filter bank.
pub fn roles<'a>(names: impl IntoIterator<Item = (&'a str, usize)>) -> Vec<(&'a str, Role)> {
    let named: Vec<(&str, usize)> = names.into_iter().collect();
    let norms: BTreeSet<&str> = named
        .iter()
        .filter_map(|(n, _)| n.strip_suffix(".running_mean"))
        .collect();
    named
        .iter()
        .map(|&(name, rank)| (name, role_of(name, rank, &norms)))
        .collect()
}

/// The role of `name` (of `rank` dimensions), given the layers that are BatchNorms.
fn role_of(name: &str, rank: usize, norms: &BTreeSet<&str>) -> Role {
    if name.ends_with("running_mean") || name.ends_with("running_var") {
        return Role::RunningStatistic;
    }
    let (layer, leaf) = name.rsplit_once('.').unwrap_or(("", name));
    match (layer, leaf) {
        ("whiten", "weight") => Role::WhitenFilters,
        ("whiten", "bias") => Role::WhitenBias,
        ("fc", "weight") => Role::HeadWeight,
        ("fc", "bias") => Role::HeadBias,
        (l, "weight") if norms.contains(l) => Role::NormScale,
        (l, "bias") if norms.contains(l) => Role::NormShift,
        (_, "bias") => Role::ConvBias,
        _ if rank == 4 => Role::Filters,
        // Nothing else exists today; a new kind of layer must say what its variables are.
        _ => panic!("model variable {name:?} (rank {rank}) has no role: label it in model::role"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_are_known_by_their_running_statistics_and_the_rest_by_layer() {
        let names = [
            ("stage0.0.conv1.bn.bias", 1),
            ("stage0.0.conv1.bn.running_mean", 1),
            ("stage0.0.conv1.bn.running_var", 1),
            ("stage0.0.conv1.bn.weight", 1),
            ("stage0.0.conv1.conv.weight", 4),
            ("stage0.0.se.reduce.bias", 1),
            ("stage0.0.se.reduce.weight", 4),
            ("fc.bias", 1),
            ("fc.weight", 2),
            ("whiten.bias", 1),
            ("whiten.weight", 4),
        ];
        let got: Vec<Role> = roles(names).into_iter().map(|(_, r)| r).collect();
        use Role::*;
        assert_eq!(
            got,
            [
                NormShift,
                RunningStatistic,
                RunningStatistic,
                NormScale,
                Filters,
                ConvBias,
                Filters,
                HeadBias,
                HeadWeight,
                WhitenBias,
                WhitenFilters
            ]
        );
        assert!(Trains::Until(3.0).frozen_in(3) && !Trains::Until(3.0).frozen_in(2));
        assert!(Trains::Never.frozen_in(0) && !Trains::Always.frozen_in(99));
    }
}
