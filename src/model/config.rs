//! Architecture hyper-parameters, closed-form parameter and FLOP counts, and the layer table.

use serde::{Deserialize, Serialize};

use crate::ops::Geometry;

/// Largest accepted channel width (stem or stage): far above any useful CIFAR network, low
/// enough that a typo cannot ask for terabytes of weights.
pub const MAX_WIDTH: usize = 16_384;

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

    /// Checks the description is buildable, naming the offending key (`model.<field>`).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |key, message: String| Err((key, message));
        if self.blocks.is_empty() || self.blocks.len() != self.widths.len() || self.blocks.len() > 8
        {
            return bad(
                "model.blocks",
                format!(
                    "blocks {:?} and widths {:?} must be equally long, with 1 to 8 stages",
                    self.blocks, self.widths
                ),
            );
        }
        if self.blocks.iter().any(|&b| !(1..=64).contains(&b)) {
            return bad(
                "model.blocks",
                format!("{:?}: each must be 1 to 64", self.blocks),
            );
        }
        if self.widths.iter().any(|&w| !(1..=MAX_WIDTH).contains(&w)) {
            return bad(
                "model.widths",
                format!("{:?}: each must be 1 to {MAX_WIDTH}", self.widths),
            );
        }
        if !(1..=8).contains(&self.expansion) {
            return bad(
                "model.expansion",
                format!("{} must be 1 to 8", self.expansion),
            );
        }
        if self.stem_width < 2 || !self.stem_width.is_multiple_of(2) || self.stem_width > MAX_WIDTH
        {
            return bad(
                "model.stem_width",
                format!("{} must be even, 2 to {MAX_WIDTH}", self.stem_width),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "model.dropout",
                format!("{} must be in [0, 1)", self.dropout),
            );
        }
        if !(0.0..=1.0).contains(&self.se_ratio) {
            return bad(
                "model.se_ratio",
                format!("{} must be in [0, 1]", self.se_ratio),
            );
        }
        validate_io(self.num_classes, self.in_channels)
    }

    /// The layer table for an input of `height × width`: one row per conv / linear layer.
    pub fn layers(&self, height: usize, width: usize) -> Vec<Layer> {
        let mut t = Vec::new();
        let (mut h, mut w) = (height, width);
        let half = self.stem_width / 2;
        // (name, cin, cout, kernel, stride, input size, batch-normed, biased)
        type Conv = (
            String,
            usize,
            usize,
            usize,
            usize,
            (usize, usize),
            bool,
            bool,
        );
        let conv = |t: &mut Vec<Layer>, (name, cin, cout, k, stride, hw, bn, bias): Conv| {
            let out_hw = (hw.0.div_ceil(stride), hw.1.div_ceil(stride));
            t.push(Layer {
                name,
                kind: if k == 1 { "conv1x1" } else { "conv3x3" },
                cin,
                cout,
                kernel: k,
                stride,
                pad: k / 2,
                in_hw: hw,
                out_hw,
                params: cin * cout * k * k
                    + if bias { cout } else { 0 }
                    + if bn { 2 * cout } else { 0 },
                macs: cin * cout * k * k * out_hw.0 * out_hw.1,
            })
        };
        let stem = |i: usize| format!("stem.{i}");
        conv(
            &mut t,
            (stem(0), self.in_channels, half, 3, 1, (h, w), true, false),
        );
        conv(&mut t, (stem(1), half, half, 3, 1, (h, w), true, false));
        conv(
            &mut t,
            (stem(2), half, self.stem_width, 3, 1, (h, w), true, false),
        );
        let mut cin = self.stem_width;
        for (s, (&n, &width_s)) in self.blocks.iter().zip(&self.widths).enumerate() {
            for b in 0..n {
                // ResNet-D: the stride sits on the 3×3 conv; the shortcut average-pools 2×2
                // and then runs a stride-1 1×1 conv on the smaller map.
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let out = width_s * self.expansion;
                let name = |part: &str| format!("stage{s}.{b}.{part}");
                let (h2, w2) = (h.div_ceil(stride), w.div_ceil(stride));
                conv(
                    &mut t,
                    (name("conv1"), cin, width_s, 1, 1, (h, w), true, false),
                );
                conv(
                    &mut t,
                    (
                        name("conv2"),
                        width_s,
                        width_s,
                        3,
                        stride,
                        (h, w),
                        true,
                        false,
                    ),
                );
                conv(
                    &mut t,
                    (name("conv3"), width_s, out, 1, 1, (h2, w2), true, false),
                );
                let hidden = self.se_hidden(out);
                if hidden > 0 {
                    conv(
                        &mut t,
                        (name("se.reduce"), out, hidden, 1, 1, (1, 1), false, true),
                    );
                    conv(
                        &mut t,
                        (name("se.expand"), hidden, out, 1, 1, (1, 1), false, true),
                    );
                }
                if stride != 1 || cin != out {
                    conv(
                        &mut t,
                        (name("shortcut"), cin, out, 1, 1, (h2, w2), true, false),
                    );
                }
                (h, w, cin) = (h2, w2, out);
            }
        }
        t.push(Layer::classifier(cin, self.num_classes, true));
        t
    }

    /// The distinct convolution geometries of [`conv_shapes`] for an input of `height × width`.
    pub fn conv_shapes(&self, height: usize, width: usize) -> Vec<(Geometry, usize)> {
        conv_shapes(&self.layers(height, width))
    }

    /// The layer table as text ([`summary`]).
    pub fn summary(&self, height: usize, width: usize) -> String {
        summary(&self.layers(height, width))
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

/// Checks a network's classes and input channels, naming the offending key.
pub(super) fn validate_io(
    num_classes: usize,
    in_channels: usize,
) -> Result<(), (&'static str, String)> {
    if !(2..=100_000).contains(&num_classes) {
        return Err((
            "model.num_classes",
            format!("{num_classes} must be 2 to 100000"),
        ));
    }
    if !(1..=4).contains(&in_channels) {
        return Err(("model.in_channels", format!("{in_channels} must be 1 to 4")));
    }
    Ok(())
}

/// The distinct geometries of a layer table's convolutions over spatial maps with padding
/// `kernel / 2` (1×1 maps, the classifier and other paddings left out), per image (`n` = 1),
/// each with how many layers have it, in [`Geometry`]'s order: what a per-op benchmark times.
pub fn conv_shapes(layers: &[Layer]) -> Vec<(Geometry, usize)> {
    let mut shapes = std::collections::BTreeMap::new();
    for l in layers {
        if l.kind == "linear" || (l.kernel == 1 && l.out_hw == (1, 1)) || l.pad != l.kernel / 2 {
            continue;
        }
        let shape = Geometry {
            n: 1,
            c: l.cin,
            h: l.in_hw.0,
            w: l.in_hw.1,
            k: l.cout,
            kh: l.kernel,
            kw: l.kernel,
            stride: l.stride,
            pad: l.pad,
        };
        *shapes.entry(shape).or_insert(0usize) += 1;
    }
    shapes.into_iter().collect()
}

/// A layer table as text, then `parameters: N`, `macs: N` and `flops: N` (per image).
pub fn summary(layers: &[Layer]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let row = |out: &mut String, cells: [&dyn std::fmt::Display; 7]| {
        let [a, b, c, d, e, f, g] = cells;
        let _ = writeln!(out, "{a:<24} {b:>8} {c:>6} {d:>6} {e:>9} {f:>12} {g:>14}");
    };
    row(
        &mut out,
        [
            &"layer", &"kind", &"in", &"out", &"output", &"params", &"macs",
        ],
    );
    for l in layers {
        let hw = format!("{}x{}", l.out_hw.0, l.out_hw.1);
        row(
            &mut out,
            [&l.name, &l.kind, &l.cin, &l.cout, &hw, &l.params, &l.macs],
        );
    }
    let macs: usize = layers.iter().map(|l| l.macs).sum();
    let params: usize = layers.iter().map(|l| l.params).sum();
    let _ = writeln!(out, "parameters: {params}");
    let _ = writeln!(out, "macs: {macs}");
    let _ = writeln!(out, "flops: {}", 2 * macs);
    out
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
    /// Kernel side (1 for the linear layer).
    pub kernel: usize,
    /// Stride (1 for the linear layer).
    pub stride: usize,
    /// Zero padding on every side (`kernel / 2` but for a valid convolution).
    pub pad: usize,
    /// Input height and width (after the shortcut's pooling, for a shortcut conv).
    pub in_hw: (usize, usize),
    /// Output height and width.
    pub out_hw: (usize, usize),
    /// Parameters (with the BatchNorm that follows, if any).
    pub params: usize,
    /// Multiply-accumulates per image.
    pub macs: usize,
}

impl Layer {
    /// The row of the linear classifier `fc`: `cin` features to `classes` logits.
    pub fn classifier(cin: usize, classes: usize, bias: bool) -> Layer {
        Layer {
            name: "fc".into(),
            kind: "linear",
            cin,
            cout: classes,
            kernel: 1,
            stride: 1,
            pad: 0,
            in_hw: (1, 1),
            out_hw: (1, 1),
            params: cin * classes + if bias { classes } else { 0 },
            macs: cin * classes,
        }
    }
}
