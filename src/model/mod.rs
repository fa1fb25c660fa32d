//! The models on candle: SE-ResNet-D (ResNet-50-D with Squeeze-and-Excitation, the report's
//! network) and airbench94's whitened conv net, behind one [`Network`] described by an
//! [`Architecture`].

mod compute;
mod config;
mod init;
mod mode;
mod network;
mod precision;
mod resnet_d;
mod role;
mod whitened;

pub use compute::Compute;
pub use config::{conv_shapes, summary, Layer, ModelConfig};
pub use mode::{dropout_mask, Dropout, Mode};
pub use network::{build_network, Architecture, Network};
pub use precision::Precision;
pub use resnet_d::{build, build_as, is_running_statistic, sorted_vars, SeResNetD};
pub use role::{roles, Role, Trains};
pub use whitened::{whitening_filters, WhitenedConfig, WhitenedNet, WHITEN_BIAS};
