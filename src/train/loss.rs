//! The training loss: cross-entropy, optionally against label-smoothed targets.

use candle_core::{Result, Tensor, D};

/// Cross-entropy of `logits` (`[n, classes]`) against labels `y` (`[n]`, u32) whose one-hot
/// targets are smoothed by `smoothing`: `(1 − ε)·NLL + ε·mean over classes of −log p`, averaged
/// over the batch, as PyTorch's `CrossEntropyLoss(label_smoothing=ε)`.
pub fn cross_entropy(logits: &Tensor, y: &Tensor, smoothing: f64) -> Result<Tensor> {
    if smoothing == 0.0 {
        return candle_nn::loss::cross_entropy(logits, y);
    }
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = candle_nn::loss::nll(&log_p, y)?;
    let uniform = log_p.mean(D::Minus1)?.mean_all()?.neg()?;
    (nll * (1.0 - smoothing))? + (uniform * smoothing)?
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::cross_entropy;

    #[test]
    fn smoothing_mixes_the_label_with_the_uniform_target() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2.0f32, 0.0, -1.0], [0.5, 0.5, 3.0]], &dev).unwrap();
        let y = Tensor::new(&[0u32, 1], &dev).unwrap();
        // By hand: log p per row, then (1 − ε)·(−log p_label) + ε·mean_k(−log p_k).
        let rows = [[2.0f64, 0.0, -1.0], [0.5, 0.5, 3.0]];
        let labels = [0usize, 1];
        for eps in [0.0, 0.1, 0.3] {
            let mut want = 0.0;
            for (r, &l) in rows.iter().zip(&labels) {
                let lse = r.iter().map(|v| v.exp()).sum::<f64>().ln();
                let nll = lse - r[l];
                let mean = r.iter().map(|v| lse - v).sum::<f64>() / 3.0;
                want += ((1.0 - eps) * nll + eps * mean) / 2.0;
            }
            let got = cross_entropy(&logits, &y, eps)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            assert!((got - want).abs() < 1e-5, "eps {eps}: {got} vs {want}");
        }
    }
}
