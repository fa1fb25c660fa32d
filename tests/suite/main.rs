//! The integration tests, one crate with a module per stage (as ripgrep's `tests/`): one test
//! binary links the library and candle once instead of once per file.
//!
//! `cargo test` runs them all; `cargo test --test suite stream::` one module.

mod common;

mod augment;
mod bad_config;
mod bad_input;
mod candle_autograd;
mod capture;
mod cli;
mod cli_flags;
mod crash;
mod distributed;
mod download;
mod going_wrong;
mod layers;
mod model;
mod mutation;
mod ops;
mod pil_parity;
mod roundtrip;
mod runs;
mod shared_jpeg;
mod stream;
mod tensorboard;
mod torch_load;
mod train;
