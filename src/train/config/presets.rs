//! The presets: the report's rows (`seed`, `seed-a`, `seed-b`), `tiny`, and airbench's recipes
//! on this crate's parts (`fast`, `fast-muon`, `fast-cpu`).

use std::path::PathBuf;

use super::{Error, GraphMode, Lookahead, MuonConfig, OptimConfig, TrainConfig};
use crate::augment::ops::PadFill;
use crate::augment::{AugmentConfig, PolicyName};
use crate::model::{Architecture, ModelConfig, Precision, WhitenedConfig};
use crate::ops::Kernels;

use crate::train::schedule::{Schedule, ScheduleKind};
use crate::train::tta::Tta;

/// The presets `--preset` accepts.
pub const PRESETS: [&str; 7] = [
    "seed",
    "seed-a",
    "seed-b",
    "tiny",
    "fast",
    "fast-muon",
    "fast-cpu",
];

impl TrainConfig {
    /// A preset by name: `seed` (the report's best row), `seed-a`, `seed-b`, `tiny`, `fast`
    /// (airbench94's recipe, for a GPU), `fast-muon` (airbench94_muon's) and `fast-cpu` (the
    /// latter at CPU size).
    pub fn preset(name: &str) -> Result<TrainConfig, Error> {
        let recipe = TrainConfig {
            preset: name.to_string(),
            data: PathBuf::from("datasets/cifar10"),
            runs: PathBuf::from("runs"),
            name: name.to_string(),
            epochs: 230,
            batch_size: 128,
            eval_batch_size: 256,
            prefetch: 4,
            threads: 0,
            seed: 0,
            save_every: 10,
            save_every_steps: None,
            eval_every: 1,
            ema_decay: 0.999,
            lookahead: None,
            label_smoothing: 0.0,
            kernels: Kernels::Fast,
            tta: Tta::None,
            precision: Precision::F32,
            tf32: true,
            sync_bn: false,
            tensorboard: true,
            cuda_graph: GraphMode::Auto,
            freeze_graph_rates: false,
            checkpoint_write_delay_ms: None,
            limit_train_batches: None,
            model: ModelConfig::resnet50().into(),
            optim: OptimConfig {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 5e-5,
                no_decay_bn_bias: false,
                bn_bias_rate_factor: 1.0,
                whiten_bias_rate_factor: 1.0,
                whiten_bias_to_zero: false,
                muon: None,
            },
            schedule: Schedule {
                kind: ScheduleKind::Cosine,
                lr: 0.01,
                min_lr: 0.0,
                restart_every: 50.0,
                restart_mult: 1.0,
                milestones: vec![115.0, 172.0],
                gamma: 0.1,
                warmup_epochs: 0.0,
                start_factor: 0.0,
                peak_at: 0.0,
                end_factor: 0.0,
            },
            augment: AugmentConfig::recipe(),
        };
        let mut c = recipe;
        match name {
            "seed" => {}
            "seed-a" => {
                c.schedule.lr = 0.001;
                c.optim.weight_decay = 1e-4;
                c.model = ModelConfig {
                    stem_width: 64,
                    ..ModelConfig::resnet50()
                }
                .into();
                c.augment.cutout_holes = 1;
                c.augment.cutout_length = 8;
            }
            "seed-b" => {
                c.schedule.lr = 0.1;
                c.model = ModelConfig {
                    se_ratio: 0.0625,
                    ..ModelConfig::resnet50()
                }
                .into();
            }
            "tiny" => {
                c.model = ModelConfig::tiny().into();
                c.data = PathBuf::from("datasets/synthetic");
                // Sized for real CIFAR-10 on a 2-core CPU: eight epochs, one cosine cycle, in
                // 14-15 minutes (see the README); the synthetic demo store takes seconds.
                c.epochs = 8;
                c.batch_size = 64;
                c.schedule.lr = 0.08;
                c.schedule.restart_every = 8.0;
                c.schedule.warmup_epochs = 0.3;
                // Measured on real data (README): this net underfits in eight epochs, so the
                // random crop costs more than it teaches (flip only: +2 points at six epochs);
                // a run that ends at lr 0 gains nothing from an EMA (73.2% EMA vs 73.5% raw at
                // seven) while its evaluation costs time; the mirrored view at test time adds
                // about 1 point for one more forward pass; label smoothing 0.1 about 0.4.
                c.ema_decay = 0.0;
                c.tta = Tta::Flip;
                c.label_smoothing = 0.1;
                c.save_every = 1;
                c.augment = AugmentConfig::with_policy(PolicyName::Basic);
                c.augment.crop = false;
                c.optim.weight_decay = 5e-4;
            }
            "fast" => c.make_fast(),
            "fast-muon" | "fast-cpu" => c.make_fast_muon(name == "fast-cpu"),
            other => {
                return Err(Error::UnknownPreset {
                    name: other.to_string(),
                })
            }
        }
        Ok(c)
    }

    /// airbench94's recipe (KellerJordan/cifar10-airbench) on this crate's parts: the whitened
    /// net, batch 1024, ten epochs of one triangle from 0.2× to the peak at 23% and down to
    /// 0.07×, Nesterov momentum 0.85, label smoothing 0.2, lookahead instead of an EMA,
    /// alternating flip and 2-pixel reflected translation, flip + translate at test time, bf16.
    fn make_fast(&mut self) {
        self.model = Architecture::Whitened(WhitenedConfig::airbench94());
        self.epochs = 10;
        self.batch_size = 1024;
        self.precision = Precision::Bf16;
        self.eval_batch_size = 1024;
        // airbench's rate, 11.5 per 1024 images on the summed loss over its "kilostep" scale
        // 1024·(1 + 1/(1 − momentum)), is 11.5·batch/7850.7 on the batch's mean loss (1.5 at
        // 1024): set for the preset's batch, to be scaled with it. Its decay, 0.0153·batch/7850.7
        // per step whatever the rate, is an L2 factor of 0.0153/11.5 on that rate.
        let momentum = 0.85;
        let kilo = 1024.0 * (1.0 + 1.0 / (1.0 - momentum));
        self.schedule = Schedule {
            kind: ScheduleKind::Triangle,
            lr: 11.5 * self.batch_size as f64 / kilo,
            start_factor: 0.2,
            peak_at: 0.23,
            end_factor: 0.07,
            warmup_epochs: 0.0,
            ..self.schedule.clone()
        };
        self.optim = OptimConfig {
            momentum,
            nesterov: true,
            weight_decay: 0.0153 / 11.5,
            no_decay_bn_bias: false,
            bn_bias_rate_factor: 64.0,
            whiten_bias_rate_factor: 1.0,
            whiten_bias_to_zero: false,
            muon: None,
        };
        self.label_smoothing = 0.2;
        self.ema_decay = 0.0;
        self.lookahead = Some(Lookahead::airbench());
        self.tta = Tta::FlipTranslate;
        // Six forward passes per test image: only after the last epoch.
        self.eval_every = self.epochs;
        self.augment = AugmentConfig::with_policy(PolicyName::Basic);
        self.augment.crop_padding = 2;
        self.augment.crop_fill = PadFill::Reflect;
        self.augment.alternating_flip = true;
    }

    /// airbench94_muon's recipe (the record after airbench94: 94.01% in 2.59 s on an A100, 0.8×
    /// its compute): airbench94's net, data and test-time views, with Muon on the filter banks
    /// (rate 0.24, momentum 0.6, three Newton–Schulz steps; the banks renormalised each step),
    /// Nesterov SGD (momentum 0.85) on the biases and the head, both falling linearly to zero,
    /// the whitening bias's over its three epochs; a unit-std head over the width; no lookahead;
    /// batch 2000 for eight epochs. `cpu`: its size for a 2-core CPU (`fast-cpu`): groups of
    /// 32, 128 and 128 channels (a quarter of the compute), eight epochs of batch 1000, f32.
    fn make_fast_muon(&mut self, cpu: bool) {
        self.make_fast();
        self.epochs = 8;
        self.batch_size = 2000;
        if cpu {
            // Measured on the shared JPEG CIFAR-10 (docs/fast.md): Muon at batch 1000 beat
            // batch 500 (87.2% against 86.7% in five epochs, the PyTorch mirror) and SGD with
            // lookahead at batch 512 (86.3%); eight epochs reach 88.6% in 13.4 minutes on a
            // 2-core Zen 4.
            self.model = Architecture::Whitened(WhitenedConfig {
                widths: vec![32, 128, 128],
                ..WhitenedConfig::airbench94()
            });
            self.batch_size = 1000;
            self.precision = Precision::F32;
        }
        self.eval_batch_size = self.batch_size;
        self.lookahead = None;
        self.eval_every = self.epochs;
        let Architecture::Whitened(net) = &mut self.model else {
            unreachable!("make_fast builds the whitened net")
        };
        net.logit_scale = 1.0 / *net.widths.last().expect("the net has groups") as f64;
        net.head_std = Some(1.0);
        // Its rates, per image on the summed loss (bias 0.053, head 0.67, decay 2e-6 · batch
        // per step), on this crate's mean loss: the head's is 0.67 · batch; the biases' a
        // factor 0.053 / 0.67 of it; the decay an L2 factor 2e-6 / 0.67 on the head's rate
        // (the factors divide it, so every group decays 2e-6 · batch per step).
        let (bias, head) = (0.053, 0.67);
        self.schedule = Schedule {
            kind: ScheduleKind::Triangle,
            lr: head * self.batch_size as f64,
            start_factor: 1.0,
            peak_at: 0.0,
            end_factor: 0.0,
            ..self.schedule.clone()
        };
        self.optim = OptimConfig {
            momentum: 0.85,
            nesterov: true,
            weight_decay: 2e-6 / head,
            no_decay_bn_bias: false,
            bn_bias_rate_factor: bias / head,
            whiten_bias_rate_factor: bias / head,
            whiten_bias_to_zero: true,
            muon: Some(MuonConfig::airbench()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_report_rows() {
        let s = TrainConfig::preset("seed").unwrap();
        let resnet = |c: &TrainConfig| c.model.se_resnet_d().unwrap().clone();
        let (sm, am, bm) = (
            resnet(&s),
            resnet(&TrainConfig::preset("seed-a").unwrap()),
            resnet(&TrainConfig::preset("seed-b").unwrap()),
        );
        assert_eq!(
            (
                s.schedule.lr,
                s.optim.weight_decay,
                sm.se_ratio,
                sm.stem_width
            ),
            (0.01, 5e-5, 0.25, 128)
        );
        assert_eq!(
            (s.augment.cutout_holes, s.augment.cutout_length, sm.dropout),
            (3, 4, 0.25)
        );
        assert_eq!(
            (s.augment.policy, s.schedule.kind, s.batch_size),
            (PolicyName::Pba, ScheduleKind::Cosine, 128)
        );
        assert!(s.optim.nesterov && s.optim.momentum == 0.9 && s.ema_decay > 0.0);
        let a = TrainConfig::preset("seed-a").unwrap();
        assert_eq!(
            (
                a.schedule.lr,
                a.optim.weight_decay,
                am.se_ratio,
                am.stem_width
            ),
            (0.001, 1e-4, 0.25, 64)
        );
        assert_eq!((a.augment.cutout_holes, a.augment.cutout_length), (1, 8));
        let b = TrainConfig::preset("seed-b").unwrap();
        assert_eq!(
            (
                b.schedule.lr,
                b.optim.weight_decay,
                bm.se_ratio,
                bm.stem_width
            ),
            (0.1, 5e-5, 0.0625, 128)
        );
        assert!(TrainConfig::preset("nope").is_err());
    }

    #[test]
    fn the_fast_presets_are_airbench94_and_refuse_an_ema_beside_lookahead() {
        let f = TrainConfig::preset("fast").unwrap();
        let Architecture::Whitened(m) = &f.model else {
            panic!("fast is the whitened net")
        };
        assert_eq!(
            (m.widths.as_slice(), f.batch_size, f.epochs),
            (&[64, 256, 256][..], 1024, 10)
        );
        // 11.5 per 1024 images over the kilostep scale 1024·(1 + 1/0.15), on the mean loss.
        assert!((f.schedule.lr - 11.5 * 1024.0 / (1024.0 * (1.0 + 1.0 / 0.15))).abs() < 1e-12);
        assert!((f.optim.weight_decay - 0.0153 / 11.5).abs() < 1e-15);
        assert_eq!(f.optim.bn_bias_rate_factor, 64.0);
        assert!(f.validate().is_ok());
        let e = f
            .merge_toml("ema_decay = 0.99")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("lookahead"), "{e}");
    }

    #[test]
    fn the_muon_presets_carry_airbench94_muons_rates_onto_the_mean_loss() {
        for (name, widths, batch, epochs) in [
            ("fast-muon", [64, 256, 256], 2000, 8),
            ("fast-cpu", [32, 128, 128], 1000, 8),
        ] {
            let c = TrainConfig::preset(name).unwrap();
            assert!(c.validate().is_ok(), "{name}");
            let Architecture::Whitened(m) = &c.model else {
                panic!("{name} is the whitened net")
            };
            assert_eq!(
                (m.widths.as_slice(), c.batch_size, c.epochs),
                (&widths[..], batch, epochs)
            );
            assert_eq!(c.optim.muon, Some(MuonConfig::airbench()), "{name}");
            assert!(c.lookahead.is_none() && c.optim.whiten_bias_to_zero);
            assert_eq!(
                (m.head_std, m.logit_scale),
                (Some(1.0), 1.0 / widths[2] as f64)
            );
            // Per image on the summed loss: head 0.67, biases 0.053, decay 2e-6 · batch a step.
            let b = batch as f64;
            assert!((c.schedule.lr - 0.67 * b).abs() < 1e-9);
            let bias = c.schedule.lr * c.optim.bn_bias_rate_factor;
            assert!((bias - 0.053 * b).abs() < 1e-9);
            assert_eq!(c.optim.whiten_bias_rate_factor, c.optim.bn_bias_rate_factor);
            assert!((c.schedule.lr * c.optim.weight_decay - 2e-6 * b).abs() < 1e-12);
            // One line from the peak down to zero.
            let s = &c.schedule;
            assert_eq!(s.lr_at(0, 10, epochs), s.lr);
            assert!((s.lr_at(5 * epochs, 10, epochs) / s.lr - 0.5).abs() < 1e-6);
            assert_eq!(s.lr_at(10 * epochs, 10, epochs), 0.0);
        }
    }
}
