//! Diagnostics of the training step, apart from training: how fast the step and each op run
//! on a device ([`timing`]: `step-bench`, `op-bench`), and how close a device's ops and whole
//! step come to the CPU's ([`op_check`]: `check-ops`; [`step_check`]: `check-step`). Both
//! checks describe their two sides with one [`Side`] and measure with [`measure`].

pub mod measure;
pub mod op_check;
mod side;
pub mod step_check;
pub mod timing;

pub use measure::{relative_l2, relative_max, uniform};
pub use op_check::CONV_SHAPES;
pub use side::Side;
