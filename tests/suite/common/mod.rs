//! Fixture builders shared by the integration tests: official-format batches, image folders,
//! tar / tar.gz archives; and a hang guard for child processes.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use cifar_stream::seed;

/// Bytes per official record.
pub const RECORD: usize = 3073;

/// `n` deterministic official-format records (labels `< 10`).
pub fn official_records(n: usize, salt: u64) -> Vec<u8> {
    let mut rng = seed::rng(salt, &[]);
    let mut out = vec![0u8; n * RECORD];
    for rec in out.chunks_mut(RECORD) {
        rec[0] = rng.u8(0..10);
        rng.fill(&mut rec[1..]);
    }
    out
}

/// Converts one official record's planar pixels to HWC, written independently of the library.
pub fn record_to_hwc(record: &[u8]) -> Vec<u8> {
    let mut hwc = Vec::with_capacity(3072);
    for p in 0..1024 {
        for c in 0..3 {
            hwc.push(record[1 + c * 1024 + p]);
        }
    }
    hwc
}

/// The six batch files of an official fixture: `(name, bytes)`, train files first.
pub fn official_files(per_file: usize) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = (1..=5)
        .map(|i| (format!("data_batch_{i}.bin"), official_records(per_file, i)))
        .collect();
    files.push(("test_batch.bin".into(), official_records(per_file, 99)));
    files
}

/// Writes an extracted official layout into `dir/cifar-10-batches-bin/` and returns that folder.
pub fn write_official_dir(dir: &Path, files: &[(String, Vec<u8>)]) -> PathBuf {
    let bin = dir.join("cifar-10-batches-bin");
    fs::create_dir_all(&bin).unwrap();
    for (name, data) in files {
        fs::write(bin.join(name), data).unwrap();
    }
    let meta = cifar_stream::source::CIFAR10_CLASSES.join("\n") + "\n";
    fs::write(bin.join("batches.meta.txt"), meta).unwrap();
    bin
}

/// Packs `root` (recursively, named by its own folder name) into `out` as tar, gzipped if asked.
pub fn tar_dir(root: &Path, out: &Path, gzip: bool) {
    let file = fs::File::create(out).unwrap();
    let name = root.file_name().unwrap();
    if gzip {
        let enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut b = tar::Builder::new(enc);
        b.append_dir_all(name, root).unwrap();
        b.into_inner().unwrap().finish().unwrap();
    } else {
        let mut b = tar::Builder::new(file);
        b.append_dir_all(name, root).unwrap();
        b.into_inner().unwrap();
    }
}

/// A deterministic RGB image of `w`×`h` for class `k`, image `i`.
pub fn fixture_pixels(w: u32, h: u32, k: usize, i: usize) -> Vec<u8> {
    let mut rng = seed::rng(k as u64, &[i as u64]);
    let mut px = vec![0u8; (w * h * 3) as usize];
    rng.fill(&mut px);
    px
}

/// Writes `root/{train,test}/<class>/NNNN.png` (lossless, so pixels round-trip exactly).
pub fn write_png_folder(root: &Path, classes: &[&str], train: usize, test: usize) {
    for (split, n) in [("train", train), ("test", test)] {
        for (k, class) in classes.iter().enumerate() {
            let dir = root.join(split).join(class);
            fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let salt = if split == "train" { i } else { 10_000 + i };
                let img =
                    image::RgbImage::from_raw(32, 32, fixture_pixels(32, 32, k, salt)).unwrap();
                img.save(dir.join(format!("{i:04}.png"))).unwrap();
            }
        }
    }
}

/// Files in `dir` (non-recursive), sorted; empty when `dir` does not exist.
pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A synthetic store of `per_class` training images per class in `dir/data`, written by the
/// library (what `prep-dataset --synthetic` writes).
pub fn synthetic_store(dir: &Path, per_class: usize) -> PathBuf {
    let data = dir.join("data");
    let bar = indicatif::ProgressBar::hidden();
    let dataset = cifar_stream::source::synthetic::generate(per_class, 0, &bar);
    cifar_stream::prep::write_store(&dataset, &data, false, &bar).unwrap();
    data
}

/// Every tensor of the checkpoint in run folder `dir`, as raw bits, by name: what two runs must
/// share to the bit.
pub fn checkpoint_bits(dir: &Path) -> Vec<(String, Vec<u64>)> {
    use candle_core::{DType, Device};
    let snapshot = cifar_stream::train::Snapshot::load(dir, &Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<u64>)> = snapshot
        .tensors()
        .iter()
        .map(|(name, t)| {
            let t = t.flatten_all().unwrap();
            let bits: Vec<u64> = match t.dtype() {
                DType::F32 => t
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits() as u64)
                    .collect(),
                DType::F64 => t
                    .to_vec1::<f64>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
                DType::U32 => t
                    .to_vec1::<u32>()
                    .unwrap()
                    .iter()
                    .map(|&x| x as u64)
                    .collect(),
                other => panic!("{name}: {other:?}"),
            };
            (name.clone(), bits)
        })
        .collect();
    out.sort();
    out
}

/// Waits for `child` to end. A hang guard, not a timing: past `limit` (far above any normal
/// run) the child is killed and the test fails saying `what` did not happen.
pub fn wait_or_kill(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} (still running after {limit:?}: killed)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `stream-train` in `dir` training a small `tiny` (widths 4/8/16, stem 8, batch 20, quiet) on
/// the store in `data`: what the tests that need a run folder start from; add flags to it.
pub fn tiny_run(dir: &Path, data: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("stream-train").unwrap();
    c.current_dir(dir)
        .args([
            "--preset",
            "tiny",
            "--widths",
            "4,8,16",
            "--stem-width",
            "8",
        ])
        .args(["--batch-size", "20", "-q", "--data"])
        .arg(data);
    c
}

/// Reads a run folder's TensorBoard events with the `tensorboard` package's own record reader
/// (raw: nothing purged or merged, so a duplicate would show), as `{tag: [[step, value], ...]}`
/// for every scalar, with `"#text"` listing the text tags, `"#images"` each image tag's steps and
/// `"#events"` counting the events.
const READ_EVENTS: &str = r##"
import glob, json, sys
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2
out, texts, images, events = {}, [], {}, 0
for path in sorted(glob.glob(sys.argv[1] + "/*tfevents*")):
    for raw in RawEventFileLoader(path).Load():
        e = event_pb2.Event.FromString(raw)
        events += 1
        for v in e.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append([e.step, v.simple_value])
            elif v.metadata.plugin_data.plugin_name == "text":
                texts.append(v.tag)
            elif v.HasField("image"):
                # A PNG TensorBoard can show, of the size it says.
                assert v.image.encoded_image_string.startswith(b"\x89PNG"), v.tag
                images.setdefault(v.tag, []).append(e.step)
out["#text"] = texts
out["#images"] = images
out["#events"] = events
print(json.dumps(out))
"##;

/// The scalars of run folder `dir` through TensorBoard's reader ([`READ_EVENTS`]), or `None`
/// where python3 cannot import `tensorboard` (a failure when `CIFAR_STREAM_TENSORBOARD=required`,
/// as CI sets it).
pub fn tensorboard_events(dir: &Path) -> Option<serde_json::Value> {
    if !python_imports("tensorboard", "CIFAR_STREAM_TENSORBOARD") {
        return None;
    }
    let out = std::process::Command::new("python3")
        .args(["-c", READ_EVENTS])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// Each scalar tag's steps, strictly increasing (no duplicate, no step back) or a panic naming it.
pub fn steps_increase(events: &serde_json::Value) {
    for (tag, points) in events.as_object().unwrap() {
        let Some(points) = points.as_array().filter(|_| !tag.starts_with('#')) else {
            continue;
        };
        let steps: Vec<i64> = points.iter().map(|p| p[0].as_i64().unwrap()).collect();
        assert!(
            steps.windows(2).all(|w| w[0] < w[1]),
            "{tag}: steps {steps:?}"
        );
    }
}

/// Run B's curves are run A's: each tag at the same steps, with the same values but for the
/// timings (seconds, images/s, stall, queue depth), which only share their steps.
pub fn same_curves(a: &serde_json::Value, b: &serde_json::Value) {
    let steps = |v: &serde_json::Value| -> Vec<i64> {
        let points = v.as_array().unwrap();
        points.iter().map(|p| p[0].as_i64().unwrap()).collect()
    };
    for (tag, points) in a.as_object().unwrap() {
        if tag.starts_with('#') {
            continue;
        }
        let timing = ["seconds", "images_per_second", "stall", "queue_depth"];
        if timing.iter().any(|t| tag.ends_with(t)) {
            assert_eq!(steps(points), steps(&b[tag]), "{tag}");
        } else {
            assert_eq!(points, &b[tag], "{tag}");
        }
    }
}

/// Whether python3 can import `modules` (comma-separated); where it cannot, the test that asks
/// skips, unless `env` is set to `required` (as CI sets it), which makes that a failure.
pub fn python_imports(modules: &str, env: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let required = std::env::var(env).is_ok_and(|v| v == "required");
        assert!(
            !required,
            "{env}=required but python3 cannot import {modules}"
        );
        eprintln!("skipped: python3 cannot import {modules}");
    }
    ok
}
