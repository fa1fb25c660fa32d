//! Architecture hyper-parameters, closed-form parameter and FLOP counts, and the layer table.

use serde::{Deserialize, Serialize};

/// What defines an SE-ResNet-D bottleneck network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Bottleneck blocks per stage (`[3, 4, 6, 3]` = ResNet-50).
    pub blocks: Vec<usize>,
    /// Bottleneck width per stage (the block output is `width × expansion`).
    pub widths: Vec<usize>,
    /// Bottleneck expansion.
    pub expansion: usize,
    /// Channels after the three-conv stem (its first two convs have half).
    pub stem_width: usize,
    /// Squeeze-and-Excitation hidden size as a fraction of the block output (0 disables SE).
    pub se_ratio: f64,
    /// Dropout before the classifier.
    pub dropout: f64,
    /// Output classes.
    pub num_classes: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Start each block's last BatchNorm scale at zero (blocks begin as identities).
    pub zero_init_last_bn: bool,
}

impl ModelConfig {
    /// The report's ResNet-50-D with SE (reduction 4) and stem 128.
    pub fn resnet50() -> Self {
        ModelConfig {
            blocks: vec![3, 4, 6, 3],
            widths: vec![64, 128, 256, 512],
            expansion: 4,
            stem_width: 128,
            se_ratio: 0.25,
            dropout: 0.25,
            num_classes: 10,
            in_channels: 3,
            zero_init_last_bn: false,
        }
    }

    /// A small three-stage network for CPU demos and tests (123 k parameters). Its capacity sits
    /// in the last, 8×8 stage, where wide layers are cheap: widening it from 32 to 64 nearly
    /// triples the parameters for ~5% less speed on 2 cores, the 32×32 layers set the pace.
    pub fn tiny() -> Self {
        ModelConfig {
            blocks: vec![1, 1, 1],
            widths: vec![8, 16, 64],
            expansion: 4,
            stem_width: 16,
            se_ratio: 0.25,
            // Underfits in a few epochs: no dropout.
            dropout: 0.0,
            num_classes: 10,
            in_channels: 3,
            zero_init_last_bn: false,
        }
    }

    /// SE hidden channels for a block with `out` output channels (0 when SE is off).
    pub fn se_hidden(&self, out: usize) -> usize {
        if self.se_ratio <= 0.0 {
            0
        } else {
            ((self.se_ratio * out as f64).round() as usize).max(1)
        }
    }

    /// Checks the description is buildable.
    pub fn validate(&self) -> Result<(), String> {
        if self.blocks.is_empty() || self.blocks.len() != self.widths.len() {
            return Err(format!(
                "blocks {:?} and widths {:?} must be non-empty and equally long",
                self.blocks, self.widths
            ));
        }
        if self.blocks.contains(&0) || self.widths.contains(&0) || self.expansion == 0 {
            return Err("blocks, widths and expansion must be positive".into());
        }
        if self.stem_width < 2 || self.stem_width % 2 != 0 {
            return Err(format!(
                "stem width {} must be even and at least 2",
                self.stem_width
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        if self.se_ratio < 0.0 {
            return Err(format!("se ratio {} must be ≥ 0", self.se_ratio));
        }
        Ok(())
    }

    /// The layer table for an input of `height × width`: one row per conv / linear layer.
    pub fn layers(&self, height: usize, width: usize) -> Vec<Layer> {
        let mut t = Vec::new();
        let (mut h, mut w) = (height, width);
        let half = self.stem_width / 2;
        let conv = |t: &mut Vec<Layer>,
                    name: String,
                    cin,
                    cout,
                    k,
                    hw: (usize, usize),
                    bn: bool,
                    bias: bool| {
            t.push(Layer {
                name,
                kind: if k == 1 { "conv1x1" } else { "conv3x3" },
                cin,
                cout,
                out_hw: hw,
                params: cin * cout * k * k
                    + if bias { cout } else { 0 }
                    + if bn { 2 * cout } else { 0 },
                macs: cin * cout * k * k * hw.0 * hw.1,
            })
        };
        conv(
            &mut t,
            "stem.0".into(),
            self.in_channels,
            half,
            3,
            (h, w),
            true,
            false,
        );
        conv(&mut t, "stem.1".into(), half, half, 3, (h, w), true, false);
        conv(
            &mut t,
            "stem.2".into(),
            half,
            self.stem_width,
            3,
            (h, w),
            true,
            false,
        );
        let mut cin = self.stem_width;
        for (s, (&n, &width_s)) in self.blocks.iter().zip(&self.widths).enumerate() {
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let out = width_s * self.expansion;
                let name = |part: &str| format!("stage{s}.{b}.{part}");
                conv(&mut t, name("conv1"), cin, width_s, 1, (h, w), true, false);
                let (h2, w2) = (h.div_ceil(stride), w.div_ceil(stride));
                conv(
                    &mut t,
                    name("conv2"),
                    width_s,
                    width_s,
                    3,
                    (h2, w2),
                    true,
                    false,
                );
                conv(
                    &mut t,
                    name("conv3"),
                    width_s,
                    out,
                    1,
                    (h2, w2),
                    true,
                    false,
                );
                let hidden = self.se_hidden(out);
                if hidden > 0 {
                    conv(
                        &mut t,
                        name("se.reduce"),
                        out,
                        hidden,
                        1,
                        (1, 1),
                        false,
                        true,
                    );
                    conv(
                        &mut t,
                        name("se.expand"),
                        hidden,
                        out,
                        1,
                        (1, 1),
                        false,
                        true,
                    );
                }
                if stride != 1 || cin != out {
                    conv(&mut t, name("shortcut"), cin, out, 1, (h2, w2), true, false);
                }
                (h, w, cin) = (h2, w2, out);
            }
        }
        t.push(Layer {
            name: "fc".into(),
            kind: "linear",
            cin,
            cout: self.num_classes,
            out_hw: (1, 1),
            params: cin * self.num_classes + self.num_classes,
            macs: cin * self.num_classes,
        });
        t
    }

    /// Trainable parameters (conv/linear weights and biases, BatchNorm scales and shifts).
    pub fn parameter_count(&self) -> usize {
        self.layers(32, 32).iter().map(|l| l.params).sum()
    }

    /// Forward multiply-accumulates per image of `height × width` (convolutions and the linear).
    pub fn macs(&self, height: usize, width: usize) -> usize {
        self.layers(height, width).iter().map(|l| l.macs).sum()
    }
}

/// One row of the layer table.
#[derive(Clone, Debug, Serialize)]
pub struct Layer {
    /// Dotted name.
    pub name: String,
    /// `conv3x3`, `conv1x1` or `linear`.
    pub kind: &'static str,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Output height and width.
    pub out_hw: (usize, usize),
    /// Parameters (with the BatchNorm that follows, if any).
    pub params: usize,
    /// Multiply-accumulates per image.
    pub macs: usize,
}
