//! # cifar-stream
//!
//! A data-pipeline-centric, streaming CIFAR-10 trainer.
//!
//! ```text
//!  prep-dataset                          stream-train
//!  ────────────                          ──────────────────────────────────────────────
//!  source::load ──► store::Writer ──► {train,test}.store ──► store::Reader (mmap, zero-copy &[u8])
//!  (official bin .tar.gz / folder,        atomic: tmp + fsync + rename      │ image i
//!   image folder / .tar / .tar.gz,                                          ▼
//!   synthetic, download)                          augment::Augmenter (rng = (seed, epoch, i)):
//!                                                   policy ops (PBA / AutoAugment / RandAugment)
//!                                                   → crop → flip → normalise → cutout
//!                                                 augment::collate (rayon) ──► Batch (NCHW f32)
//!                                                                           │
//!  stream::Sampler (seeded permutation per epoch) → stream::Loader producer thread
//!    ── bounded tokio mpsc (depth = prefetch), buffers recycled ──► Epoch (blocking / async)
//!                                                                           │ host batches
//!                                                                           ▼
//!  train::Trainer (own thread, one run folder: train::RunDir): h2d → train::Learner::step
//!    ├─ model::Network (model::SeResNetD, or the whitened net of `fast`) forward/backward
//!    │  (candle) through ops::conv2d, ops::BatchNorm, ops::block_tail, ops::squeeze, ops::gelu,
//!    │  ops::max_pool2: on the CPU im2col + GEMM and fused passes with hand-written backward
//!    │  passes; on CUDA this crate's kernels and cuDNN (ops::Kernels::route)
//!    ├─ dist::Collective::average (data-parallel ranks; the identity alone)
//!    ├─ train::Sgd (Nesterov, L2)   ├─ train::Schedule::lr_at (cosine restarts / multi-step /
//!    │  + train::Muon (filters)     │  triangle)
//!    ├─ train::Ema / train::Lookahead └─ train::evaluate (raw + EMA, train::Tta) every eval_every
//!    └─ train::Snapshot (checkpoint: Learner::state + train::State, atomic) + train::metrics
//!  train::SavedRun: eval / predict on a finished run
//!  telemetry: tracing spans (read, augment, send, wait, …) → per-epoch profile, Chrome trace
//! ```
//!
//! Data flows one way: `source` → `store` → augmentation → streaming → training. Every random
//! draw derives from an explicit seed ([`seed`]).
//!
//! ## Layers
//!
//! A module imports only modules on rows below its own (never one on its row or above), so the
//! crate reads bottom-up and each stage can be tested without the ones above it. The run's
//! configuration is `train`'s (`train::config`); each stage's own settings live with the stage
//! (`model::ModelConfig`, `augment::AugmentConfig`). `tests/suite/layers.rs` reads this table and
//! every `crate::` path in `src/` and fails on an upward import or a module missing from the
//! table; inside each folder it fails on an import loop between files.
//!
//! ```text
//!  6  train
//!  5  stream · model · prep
//!  4  augment · ops · source · tensorboard
//!  3  render
//!  2  store · telemetry · device · alloc · dist
//!  1  seed
//! ```

pub mod alloc;
pub mod augment;
pub mod device;
pub mod dist;
pub mod model;
pub mod ops;
pub mod prep;
pub mod render;
pub mod seed;
pub mod source;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod tensorboard;
pub mod train;
