//! The model: SE-ResNet-D (ResNet-50-D with Squeeze-and-Excitation) on candle.

mod config;
mod init;
mod precision;
mod resnet_d;

pub use config::{ConvShape, Layer, ModelConfig};
pub use precision::Precision;
pub use resnet_d::{build, build_as, is_running_statistic, sorted_vars, Mode, SeResNetD};
