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
//!  train::train (own thread): h2d → model::SeResNetD forward/backward (candle)
//!    └─ ops::conv2d, ops::BatchNorm: im2col + GEMM convolution and fused BatchNorm(+ReLU) with
//!       hand-written backward passes on CPU; candle's own ops elsewhere (ops::Kernels)
//!    ├─ train::Sgd (Nesterov, L2)  ├─ train::Schedule (cosine restarts / multi-step)
//!    ├─ train::Ema                 └─ train::checkpoint (safetensors, atomic) + train::metrics
//!  telemetry: tracing spans (read, augment, send, wait, …) → per-epoch profile, Chrome trace
//! ```
//!
//! Data flows one way: `source` → `store` → augmentation → streaming → training. Lower modules
//! never import higher ones. Every random draw derives from an explicit seed ([`seed`]).

pub mod alloc;
pub mod augment;
pub mod config;
pub mod device;
pub mod model;
pub mod ops;
pub mod prep;
pub mod render;
pub mod seed;
pub mod source;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod train;
