//! Flag groups of the model and the step. Each group maps onto part of `TrainConfig` and each
//! command flattens only the groups whose settings it reads, so no command accepts a flag it
//! would ignore; the main command's modes (`--summary`, `--pipeline-only`, …) refuse the groups
//! they do not read. The stream's and the run's groups are in `stream_args`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use cifar_stream::model::{Architecture, Precision};
use cifar_stream::ops::Kernels;
use cifar_stream::train::config::{Origin, TrainConfig};
use cifar_stream::train::ScheduleKind;

/// A count that must be at least 1 (clap value parser).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A flag group that sets part of the configuration.
pub trait Apply {
    /// Writes the flags that were given into `c`.
    fn apply(&self, c: &mut TrainConfig);

    /// Why the flags given do not fit the configuration they were applied to, if they do not.
    fn refuses(&self, _c: &TrainConfig) -> Option<String> {
        None
    }
}

/// Where the configuration starts: a preset, then a TOML file over it.
#[derive(Args)]
#[group(id = "config_source", multiple = true)]
pub struct ConfigSource {
    /// Starting point: seed (the report's best row), seed-a, seed-b, tiny (small CPU model),
    /// fast (airbench94's recipe, for a GPU), fast-muon (airbench94_muon's), fast-cpu
    /// (airbench94_muon at CPU size).
    #[arg(long, default_value = "seed")]
    pub preset: String,
    /// TOML file whose keys override the preset (same names as the run's config.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigSource {
    /// The preset (or the saved run in `resume`), the TOML file, then `groups`, validated.
    pub fn resolve(&self, resume: Option<&Path>, groups: &[&dyn Apply]) -> Result<TrainConfig> {
        let origin = match resume {
            Some(dir) => Origin::Run(dir),
            None => Origin::Preset(&self.preset),
        };
        let c = TrainConfig::layered(origin, self.config.as_deref(), |c| {
            for g in groups {
                g.apply(c);
            }
        })?;
        if let Some(why) = groups.iter().find_map(|g| g.refuses(&c)) {
            anyhow::bail!(why);
        }
        Ok(c)
    }
}

/// `--device`.
#[derive(Args)]
#[group(id = "device_flag")]
pub struct DeviceFlag {
    /// cpu, cuda or cuda:N [default: cuda when built with it and a GPU is present, else cpu].
    #[arg(long)]
    pub device: Option<String>,
}

impl DeviceFlag {
    /// The chosen candle device.
    pub fn select(&self) -> Result<candle_core::Device> {
        Ok(cifar_stream::device::select(self.device.as_deref())?)
    }
}

/// The architecture.
#[derive(Args)]
#[group(id = "model_flags", multiple = true)]
pub struct ModelFlags {
    /// Stem width [seed: 128].
    #[arg(long)]
    stem_width: Option<usize>,
    /// SE hidden size / block output, 0 disables [seed: 0.25].
    #[arg(long)]
    se_ratio: Option<f64>,
    /// Dropout before the classifier [seed: 0.25].
    #[arg(long)]
    dropout: Option<f64>,
    /// Blocks per stage, comma-separated [seed: 3,4,6,3].
    #[arg(long, value_delimiter = ',')]
    blocks: Option<Vec<usize>>,
    /// Bottleneck width per stage, comma-separated [seed: 64,128,256,512].
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// Zero-initialise each block's last BatchNorm scale.
    #[arg(long)]
    zero_init_last_bn: bool,
}

impl Apply for ModelFlags {
    fn apply(&self, c: &mut TrainConfig) {
        match &mut c.model {
            Architecture::SeResnetD(m) => {
                set!(self, m: stem_width => stem_width, se_ratio => se_ratio,
                    dropout => dropout, blocks => blocks, widths => widths);
                m.zero_init_last_bn |= self.zero_init_last_bn;
            }
            Architecture::Whitened(m) => set!(self, m: widths => widths),
        }
    }

    fn refuses(&self, c: &TrainConfig) -> Option<String> {
        let resnet_only = self.stem_width.is_some()
            || self.se_ratio.is_some()
            || self.dropout.is_some()
            || self.blocks.is_some()
            || self.zero_init_last_bn;
        (resnet_only && c.model.se_resnet_d().is_none()).then(|| {
            "--stem-width, --se-ratio, --dropout, --blocks and --zero-init-last-bn set an \
             SE-ResNet-D; this preset's network is the whitened net (only --widths applies)"
                .to_string()
        })
    }
}

/// `--kernels`.
#[derive(Args)]
#[group(id = "kernel_flag")]
pub struct KernelFlag {
    /// Convolution/BatchNorm implementation: fast (this crate's ops with explicit backward
    /// passes: on the CPU its im2col + GEMM convolution and fused BatchNorm and block tail, on
    /// CUDA its own kernels and cuDNN) or stock (candle's own ops everywhere) [default: fast].
    #[arg(long, value_enum)]
    kernels: Option<Kernels>,
}

impl Apply for KernelFlag {
    fn apply(&self, c: &mut TrainConfig) {
        set!(self, c: kernels => kernels);
    }
}

/// `--precision`.
#[derive(Args)]
#[group(id = "precision_flag")]
pub struct PrecisionFlag {
    /// Compute precision: f32, or bf16 (on CUDA bf16 convolutions and activations; on a CPU with
    /// AVX512-BF16 the 3×3 convolutions' products in bf16, summed in f32; f32 master weights,
    /// BatchNorm, loss and optimizer either way) [default: f32].
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// No TF32 tensor cores for f32 convolutions and matrix products on CUDA (they are allowed
    /// by default, as PyTorch allows them for cuDNN convolutions).
    #[arg(long)]
    no_tf32: bool,
}

impl Apply for PrecisionFlag {
    fn apply(&self, c: &mut TrainConfig) {
        set!(self, c: precision => precision);
        c.tf32 &= !self.no_tf32;
    }
}

/// The optimizer and the loss.
#[derive(Args)]
#[group(id = "optim_flags", multiple = true)]
pub struct OptimFlags {
    /// Peak learning rate [seed: 0.01].
    #[arg(long)]
    lr: Option<f64>,
    /// L2 weight decay [seed: 5e-5].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// SGD momentum [seed: 0.9].
    #[arg(long)]
    momentum: Option<f64>,
    /// Plain (not Nesterov) momentum.
    #[arg(long)]
    no_nesterov: bool,
    /// No weight decay on BatchNorm parameters and biases.
    #[arg(long)]
    no_decay_bn_bias: bool,
    /// Label smoothing of the training loss (0 = plain cross-entropy) [default: 0].
    #[arg(long)]
    label_smoothing: Option<f64>,
}

impl Apply for OptimFlags {
    fn apply(&self, c: &mut TrainConfig) {
        set!(self, c: lr => schedule.lr, weight_decay => optim.weight_decay,
            momentum => optim.momentum, label_smoothing => label_smoothing);
        c.optim.nesterov &= !self.no_nesterov;
        c.optim.no_decay_bn_bias |= self.no_decay_bn_bias;
    }
}

/// The learning-rate schedule's shape.
#[derive(Args)]
#[group(id = "schedule_flags", multiple = true)]
pub struct ScheduleFlags {
    /// Learning-rate schedule [seed: cosine with warm restarts].
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Cosine: epochs of the first cycle [seed: 50].
    #[arg(long)]
    restart_every: Option<f64>,
    /// Cosine: cycle length multiplier [seed: 1].
    #[arg(long)]
    restart_mult: Option<f64>,
    /// Cosine: learning-rate floor [seed: 0].
    #[arg(long)]
    min_lr: Option<f64>,
    /// Multi-step: epochs at which the rate drops, comma-separated [seed: 115,172].
    #[arg(long, value_delimiter = ',')]
    milestones: Option<Vec<f64>>,
    /// Multi-step: factor at each milestone [seed: 0.1].
    #[arg(long)]
    gamma: Option<f64>,
    /// Linear warm-up epochs [seed: 0].
    #[arg(long)]
    warmup_epochs: Option<f64>,
}

impl Apply for ScheduleFlags {
    fn apply(&self, c: &mut TrainConfig) {
        set!(self, c: schedule => schedule.kind, restart_every => schedule.restart_every,
            restart_mult => schedule.restart_mult, min_lr => schedule.min_lr,
            milestones => schedule.milestones, gamma => schedule.gamma,
            warmup_epochs => schedule.warmup_epochs);
    }
}

/// What every command that builds the network reads: where the configuration starts, the
/// device, the architecture and its kernels.
#[derive(Args)]
pub struct NetArgs {
    #[command(flatten)]
    pub source: ConfigSource,
    #[command(flatten)]
    pub device: DeviceFlag,
    #[command(flatten)]
    pub model: ModelFlags,
    #[command(flatten)]
    pub kernels: KernelFlag,
}

impl NetArgs {
    /// The configuration with the model and kernel flags, then `more`.
    pub fn resolve(&self, more: &[&dyn Apply]) -> Result<TrainConfig> {
        self.resolve_from(None, more)
    }

    /// [`NetArgs::resolve`] starting from the saved run in `resume` instead of the preset.
    pub fn resolve_from(&self, resume: Option<&Path>, more: &[&dyn Apply]) -> Result<TrainConfig> {
        let mut groups: Vec<&dyn Apply> = vec![&self.model, &self.kernels];
        groups.extend_from_slice(more);
        self.source.resolve(resume, &groups)
    }
}
