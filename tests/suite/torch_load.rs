//! A trained run loads into PyTorch (`tools/torch_load.py`) and classifies as `predict` does:
//! the raw and the EMA weights, the same class and probability on the first test images.
//!
//! Needs python3 with torch and numpy; without them it says so and passes, unless
//! `CIFAR_STREAM_TORCH=required` (CI sets it and installs torch) makes their absence a failure.

use std::path::Path;
use std::process::Command;

use candle_core::Device;
use cifar_stream::store::{Reader, Split};
use cifar_stream::train::{SavedRun, Tta};

use crate::common::{python_imports, synthetic_store, tiny_run};

fn torch_available() -> bool {
    python_imports("torch, numpy", "CIFAR_STREAM_TORCH")
}

#[test]
fn pytorch_classifies_a_loaded_run_as_predict_does() {
    if !torch_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = synthetic_store(tmp.path(), 4);
    tiny_run(tmp.path(), &data)
        .args(["--epochs", "2", "--ema-decay", "0.9"])
        .assert()
        .success();
    let run = tmp.path().join("runs/tiny");
    let store = Split::Test.path_in(&data);
    let reader = Reader::open(&store).unwrap();
    let count = 8;
    let pixels: Vec<u8> = (0..count).flat_map(|i| reader.image(i).to_vec()).collect();
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/torch_load.py");
    for raw in [false, true] {
        let saved = SavedRun::load(&run, raw, &Device::Cpu).unwrap();
        let ours = saved.predict(&pixels, Tta::None).unwrap();
        let mut python = Command::new("python3");
        python.arg(&tool).arg(&run).arg("--store").arg(&store);
        python.args(["--count", &count.to_string()]);
        if raw {
            python.arg("--raw");
        }
        let out = python.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let theirs: Vec<(String, f32)> = stdout
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[1].to_string(), f[2].parse().unwrap())
            })
            .collect();
        assert_eq!(theirs.len(), count, "{stdout}");
        for (i, (p, (name, prob))) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(&p.name, name, "image {i} (raw {raw}): {stdout}");
            assert!(
                (p.probability - prob).abs() < 1e-4,
                "image {i} (raw {raw}): {} vs {prob}",
                p.probability
            );
        }
    }
}
