//! Which network a run trains: its description ([`Architecture`], the `[model]` table of a run's
//! configuration) and its built layers ([`Network`]).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Deserializer, Serialize};

use super::compute::Compute;
use super::config::{self, Layer, ModelConfig};
use super::mode::Mode;
use super::resnet_d::{seeded, SeResNetD};
use super::role::Trains;
use super::whitened::{WhitenedConfig, WhitenedNet};
use crate::ops::Geometry;

/// A network's description, tagged by `arch` (a configuration without the tag, as every run
/// before the whitened net had, is an SE-ResNet-D).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "arch", rename_all = "kebab-case")]
pub enum Architecture {
    /// SE-ResNet-D: the report's network.
    SeResnetD(ModelConfig),
    /// airbench94's whitened conv net.
    Whitened(WhitenedConfig),
}

/// The same shape as [`Architecture`], read with its tag required.
#[derive(Deserialize)]
#[serde(tag = "arch", rename_all = "kebab-case")]
enum Tagged {
    SeResnetD(ModelConfig),
    Whitened(WhitenedConfig),
}

impl<'de> Deserialize<'de> for Architecture {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut value = toml::Value::deserialize(d)?;
        if let toml::Value::Table(t) = &mut value {
            t.entry("arch")
                .or_insert_with(|| toml::Value::from("se-resnet-d"));
        }
        let tagged = Tagged::deserialize(value).map_err(serde::de::Error::custom)?;
        Ok(match tagged {
            Tagged::SeResnetD(c) => Architecture::SeResnetD(c),
            Tagged::Whitened(c) => Architecture::Whitened(c),
        })
    }
}

impl From<ModelConfig> for Architecture {
    fn from(c: ModelConfig) -> Self {
        Architecture::SeResnetD(c)
    }
}

impl Architecture {
    /// The SE-ResNet-D description, if it is one.
    pub fn se_resnet_d(&self) -> Option<&ModelConfig> {
        match self {
            Architecture::SeResnetD(c) => Some(c),
            Architecture::Whitened(_) => None,
        }
    }

    /// The SE-ResNet-D description to change, if it is one.
    pub fn se_resnet_d_mut(&mut self) -> Option<&mut ModelConfig> {
        match self {
            Architecture::SeResnetD(c) => Some(c),
            Architecture::Whitened(_) => None,
        }
    }

    /// Output classes.
    pub fn num_classes(&self) -> usize {
        match self {
            Architecture::SeResnetD(c) => c.num_classes,
            Architecture::Whitened(c) => c.num_classes,
        }
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        match self {
            Architecture::SeResnetD(c) => c.in_channels,
            Architecture::Whitened(c) => c.in_channels,
        }
    }

    /// Checks the description is buildable, naming the offending key (`model.<field>`).
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        match self {
            Architecture::SeResnetD(c) => c.validate(),
            Architecture::Whitened(c) => c.validate(),
        }
    }

    /// The layer table for an input of `height × width`.
    pub fn layers(&self, height: usize, width: usize) -> Vec<Layer> {
        match self {
            Architecture::SeResnetD(c) => c.layers(height, width),
            Architecture::Whitened(c) => c.layers(height, width),
        }
    }

    /// The distinct convolution geometries ([`config::conv_shapes`]).
    pub fn conv_shapes(&self, height: usize, width: usize) -> Vec<(Geometry, usize)> {
        config::conv_shapes(&self.layers(height, width))
    }

    /// The layer table as text ([`config::summary`]).
    pub fn summary(&self, height: usize, width: usize) -> String {
        config::summary(&self.layers(height, width))
    }

    /// Trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.layers(32, 32).iter().map(|l| l.params).sum()
    }

    /// Forward multiply-accumulates per image of `height × width`.
    pub fn macs(&self, height: usize, width: usize) -> usize {
        self.layers(height, width).iter().map(|l| l.macs).sum()
    }

    /// When variable `name` trains: the whitened net never trains its whitening filters and
    /// BatchNorm scales, and its whitening bias only in the first `whiten_bias_epochs`.
    pub fn trains(&self, name: &str) -> Trains {
        match self {
            Architecture::SeResnetD(_) => Trains::Always,
            Architecture::Whitened(_) if WhitenedConfig::is_frozen(name) => Trains::Never,
            Architecture::Whitened(c) if name == super::whitened::WHITEN_BIAS => {
                Trains::Until(c.whiten_bias_epochs)
            }
            Architecture::Whitened(_) => Trains::Always,
        }
    }
}

/// A built network of either architecture.
pub enum Network {
    /// SE-ResNet-D.
    SeResnetD(SeResNetD),
    /// The whitened conv net.
    Whitened(WhitenedNet),
}

impl Network {
    /// Logits `[batch, classes]` for images `[batch, C, H, W]`, in the variables' dtype.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match self {
            Network::SeResnetD(m) => m.forward(x, mode),
            Network::Whitened(m) => m.forward(x, mode),
        }
    }

    /// How it computes.
    pub fn compute(&self) -> &Compute {
        match self {
            Network::SeResnetD(m) => m.compute(),
            Network::Whitened(m) => m.compute(),
        }
    }

    /// How it computes, to change.
    pub fn compute_mut(&mut self) -> &mut Compute {
        match self {
            Network::SeResnetD(m) => m.compute_mut(),
            Network::Whitened(m) => m.compute_mut(),
        }
    }

    /// Dropout's rate and the width of the features it masks (`[batch, width]` per step),
    /// when the network drops anything.
    pub fn dropout(&self) -> Option<(f64, usize)> {
        match self {
            Network::SeResnetD(m) => m.dropout(),
            Network::Whitened(_) => None,
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        match self {
            Network::SeResnetD(m) => m.device(),
            Network::Whitened(m) => m.device(),
        }
    }

    /// Output classes.
    pub fn num_classes(&self) -> usize {
        match self {
            Network::SeResnetD(m) => m.config().num_classes,
            Network::Whitened(m) => m.config().num_classes,
        }
    }

    /// Tells the network which of its variables train in this epoch (`frozen`), so it can skip
    /// gradients nobody reads: the whitened net cuts its graph once its first layer is frozen
    /// whole; SE-ResNet-D trains everything.
    pub fn set_frozen(&mut self, frozen: &dyn Fn(&str) -> bool) {
        if let Network::Whitened(m) = self {
            m.set_whiten_bias_trains(!frozen(super::whitened::WHITEN_BIAS));
        }
    }

    /// The whitened net, if it is one (its whitening filters come from the training data).
    pub fn as_whitened(&self) -> Option<&WhitenedNet> {
        match self {
            Network::Whitened(m) => Some(m),
            Network::SeResnetD(_) => None,
        }
    }
}

/// A fresh network of `arch` with deterministic initial weights (see [`super::build`]), with
/// variables of `dtype`.
pub fn build_network(
    arch: &Architecture,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<(Network, VarMap)> {
    seeded(seed, device, dtype, |vb| {
        Ok(match arch {
            Architecture::SeResnetD(c) => Network::SeResnetD(SeResNetD::new(c, vb)?),
            Architecture::Whitened(c) => Network::Whitened(WhitenedNet::new(c, vb)?),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_table_without_arch_is_an_se_resnet_d_and_errors_name_the_key() {
        // A run's config.toml from before the tag existed.
        let old = toml::to_string(&ModelConfig::tiny()).unwrap();
        assert!(!old.contains("arch"));
        let read: Architecture = toml::from_str(&old).unwrap();
        assert_eq!(read, Architecture::SeResnetD(ModelConfig::tiny()));
        // And from a checkpoint's JSON.
        let json = serde_json::to_string(&ModelConfig::tiny()).unwrap();
        let read: Architecture = serde_json::from_str(&json).unwrap();
        assert_eq!(read, Architecture::SeResnetD(ModelConfig::tiny()));
        for arch in [
            Architecture::SeResnetD(ModelConfig::resnet50()),
            Architecture::Whitened(WhitenedConfig::airbench94()),
        ] {
            let text = toml::to_string(&arch).unwrap();
            assert_eq!(toml::from_str::<Architecture>(&text).unwrap(), arch);
            let json = serde_json::to_string(&arch).unwrap();
            assert_eq!(serde_json::from_str::<Architecture>(&json).unwrap(), arch);
        }
        let bad = format!("{old}widthz = [1]\n");
        let e = toml::from_str::<Architecture>(&bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("widthz"), "{e}");
        let e = toml::from_str::<Architecture>("arch = \"vgg\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vgg"), "{e}");
    }

    #[test]
    fn the_whitened_layer_table_counts_airbench94() {
        let a = Architecture::Whitened(WhitenedConfig::airbench94());
        // airbench94: 1.97 M trained parameters (the fixed BatchNorm scales and whitening
        // filters left out), 118 M multiply-accumulates per forward pass of a 32×32 image.
        let params = a.parameter_count();
        assert!((1_900_000..2_000_000).contains(&params), "{params}");
        let flops = 2 * a.macs(32, 32);
        assert_eq!(flops, 2 * 118_147_360, "{flops}");
        let layers = a.layers(32, 32);
        assert_eq!(layers[0].out_hw, (31, 31));
        assert_eq!(layers.last().unwrap().cin, 256);
        assert_eq!(a.trains("whiten.weight"), Trains::Never);
        assert_eq!(a.trains("group1.norm2.weight"), Trains::Never);
        assert_eq!(a.trains("group1.norm2.bias"), Trains::Always);
        assert_eq!(a.trains("whiten.bias"), Trains::Until(3.0));
    }
}
