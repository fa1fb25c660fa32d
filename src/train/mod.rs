//! The training stage: SGD with Nesterov momentum, learning-rate schedules, EMA, checkpoints,
//! metrics, and the loop that consumes the stream.

pub mod checkpoint;
pub mod ema;
pub mod loss;
pub mod metrics;
pub mod parity;
pub mod running;
pub mod schedule;
pub mod sgd;
pub mod trainer;
pub mod tta;

pub use ema::Ema;
pub use metrics::EpochMetrics;
pub use running::Running;
pub use schedule::{Schedule, ScheduleKind};
pub use sgd::Sgd;
pub use trainer::{
    evaluate, step_sgd, train, Evaluation, Net, Observer, Outcome, Silent, LOSS_READ_EVERY,
};
pub use tta::Tta;
