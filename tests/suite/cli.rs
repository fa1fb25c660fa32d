//! The `prep-dataset` binary: exit codes, JSON for scripts, inspect, grid, --force.

use crate::common::*;
use assert_cmd::Command;
use serde_json::Value;

fn prep_dataset() -> Command {
    Command::cargo_bin("prep-dataset").unwrap()
}

fn json_of(output: &[u8]) -> Value {
    serde_json::from_slice(output).expect("stdout is one JSON object")
}

#[test]
fn synthetic_prep_prints_the_documented_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("syn");
    let assert = prep_dataset()
        .args([
            "--synthetic",
            "--per-class",
            "10",
            "--seed",
            "4",
            "--json",
            "--verify",
            "--out",
        ])
        .arg(&out)
        .assert()
        .success();
    let v = json_of(&assert.get_output().stdout);
    assert!(v["seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["verified"], true);
    for (split, n) in [("train", 10), ("test", 2)] {
        let s = &v["splits"][split];
        assert_eq!(s["images"], 10 * n);
        assert_eq!(s["class_counts"].as_array().unwrap().len(), 10);
        assert!(s["class_counts"].as_array().unwrap().iter().all(|c| c == n));
        for key in ["mean", "std"] {
            let vals = s[key].as_array().unwrap();
            assert_eq!(vals.len(), 3);
            assert!(vals
                .iter()
                .all(|x| (0.0..=1.0).contains(&x.as_f64().unwrap())));
        }
    }
    assert_eq!(list(&out), vec!["test.store", "train.store"]);
}

#[test]
fn inspect_reports_verifies_and_draws_a_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("syn");
    prep_dataset()
        .args(["--synthetic", "--per-class", "6", "-q", "--out"])
        .arg(&out)
        .assert()
        .success();
    let png = tmp.path().join("grid.png");
    let assert = prep_dataset()
        .arg("inspect")
        .arg(&out)
        .args(["--verify", "--json", "--grid-per-class", "4", "--grid"])
        .arg(&png)
        .assert()
        .success();
    let v = json_of(&assert.get_output().stdout);
    assert_eq!(v["splits"]["train"]["images"], 60);
    assert_eq!(v["classes"][0], "disk");
    let img = image::open(&png).unwrap();
    // 10 rows of 64-px cells with 2-px gaps; 4 columns plus a label column.
    assert_eq!(img.height(), 10 * 66 + 2);
    assert!(img.width() > 4 * 66);
    // The human summary names every class.
    let text = prep_dataset().arg("inspect").arg(&out).assert().success();
    let stdout = String::from_utf8(text.get_output().stdout.clone()).unwrap();
    assert!(
        stdout.contains("checker") && stdout.contains("train: 60 images"),
        "{stdout}"
    );
}

#[test]
fn existing_store_is_kept_without_force_and_replaced_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("syn");
    prep_dataset()
        .args(["--synthetic", "--per-class", "3", "-q", "--out"])
        .arg(&out)
        .assert()
        .success();
    let before = std::fs::read(out.join("train.store")).unwrap();
    prep_dataset()
        .args(["--synthetic", "--per-class", "4", "-q", "--out"])
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicates::str::contains("--force"));
    assert_eq!(std::fs::read(out.join("train.store")).unwrap(), before);
    prep_dataset()
        .args(["--synthetic", "--per-class", "4", "-q", "--force", "--out"])
        .arg(&out)
        .assert()
        .success();
    assert_ne!(std::fs::read(out.join("train.store")).unwrap(), before);
}

#[test]
fn bad_source_exits_non_zero_with_the_file_named_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = official_files(2);
    files[0].1.truncate(100);
    let bin = write_official_dir(tmp.path(), &files);
    let out = tmp.path().join("store");
    prep_dataset()
        .args(["-q", "--source"])
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicates::str::contains("data_batch_1.bin"))
        .stderr(predicates::str::contains("3073"));
    assert!(!out.exists());
}

#[test]
fn official_archive_preps_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = write_official_dir(tmp.path(), &official_files(3));
    let archive = tmp.path().join("cifar-10-binary.tar.gz");
    tar_dir(&bin, &archive, true);
    let out = tmp.path().join("store");
    let assert = prep_dataset()
        .args(["-q", "--json", "--source"])
        .arg(&archive)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let v = json_of(&assert.get_output().stdout);
    assert_eq!(v["splits"]["train"]["images"], 15);
    assert_eq!(v["splits"]["test"]["images"], 3);
    assert_eq!(v["classes"][9], "truck");
}

#[test]
fn no_source_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    prep_dataset()
        .current_dir(tmp.path())
        .arg("-q")
        .assert()
        .failure()
        .stderr(predicates::str::contains("--source"));
    prep_dataset()
        .args(["--synthetic", "--download"])
        .assert()
        .failure();
}

#[test]
fn augment_preview_is_byte_identical_for_the_same_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("syn");
    prep_dataset()
        .args(["--synthetic", "--per-class", "4", "-q", "--out"])
        .arg(&data)
        .assert()
        .success();
    let run = |seed: &str, png: &str| {
        Command::cargo_bin("stream-train")
            .unwrap()
            .args([
                "augment-preview",
                "-n",
                "3",
                "-k",
                "4",
                "--epoch",
                "150",
                "--seed",
                seed,
                "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(tmp.path().join(png))
            .assert()
            .success();
        std::fs::read(tmp.path().join(png)).unwrap()
    };
    let a = run("9", "a.png");
    assert_eq!(a, run("9", "b.png"));
    assert_ne!(a, run("10", "c.png"));
    let img = image::load_from_memory(&a).unwrap();
    assert_eq!(
        img.height(),
        3 * (96 + 2) + 2,
        "3 rows of 3x-enlarged 32-px images"
    );
}

#[test]
fn augment_preview_without_a_store_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    Command::cargo_bin("stream-train")
        .unwrap()
        .args(["augment-preview", "--out", "x.png", "--data"])
        .arg(tmp.path())
        .assert()
        .failure()
        .stderr(predicates::str::contains("prep-dataset"));
}

#[test]
fn pipeline_only_prints_profiles_and_writes_a_valid_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("syn");
    prep_dataset()
        .args(["--synthetic", "--per-class", "20", "-q", "--out"])
        .arg(&data)
        .assert()
        .success();
    let trace = tmp.path().join("trace.json");
    let prof = tmp.path().join("profile.jsonl");
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .args([
            "--pipeline-only",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "-q",
            "--data",
        ])
        .arg(&data)
        .arg("--trace")
        .arg(&trace)
        .arg("--profile-json")
        .arg(&prof)
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(stdout.contains("epoch 1: 200 images"), "{stdout}");
    for stage in ["read", "augment", "send", "wait"] {
        assert!(
            stdout.contains(&format!("  {stage} ")),
            "{stage} missing from\n{stdout}"
        );
    }
    let rate: f64 = stdout
        .lines()
        .last()
        .unwrap()
        .strip_prefix("images/s: ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(rate > 0.0);
    let events: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).expect("trace is JSON");
    for stage in ["read", "augment", "send", "wait"] {
        let begins = events
            .iter()
            .filter(|e| e["name"] == stage && e["ph"] == "B")
            .count();
        let ends = events
            .iter()
            .filter(|e| e["name"] == stage && e["ph"] == "E")
            .count();
        // Every batch is read, augmented and sent; the consumer only waits when it finds the
        // queue empty, which depends on timing.
        let least = if stage == "wait" { 1 } else { 14 };
        assert!(
            begins >= least && begins == ends,
            "{stage}: {begins} begins, {ends} ends"
        );
    }
    let lines: Vec<Value> = std::fs::read_to_string(&prof)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["epoch"], 1);
    assert_eq!(lines[1]["images"], 200);
    assert!(lines[1]["trainer_stall"].as_f64().unwrap() >= 0.0);
    assert_eq!(lines[1]["stages"].as_array().unwrap().len(), 4);
}

#[test]
fn summary_prints_the_layer_table_parameters_and_flops_without_data() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .current_dir(tmp.path())
        .args(["--preset", "seed", "--summary"])
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let value = |key: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in\n{stdout}"));
        line[key.len()..].trim().parse().unwrap()
    };
    let want = cifar_stream::train::config::TrainConfig::preset("seed")
        .unwrap()
        .model;
    assert_eq!(value("parameters:"), want.parameter_count() as u64);
    assert_eq!(value("flops:"), 2 * want.macs(32, 32) as u64);
    assert!(stdout.contains("stage3.2.se.expand"), "{stdout}");
    // A flag changes the architecture.
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .args(["--preset", "seed", "--se-ratio", "0", "--summary"])
        .assert()
        .success();
    assert!(!String::from_utf8(out.get_output().stdout.clone())
        .unwrap()
        .contains("se.expand"));
}

#[test]
fn train_then_eval_predict_and_resume_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("syn");
    prep_dataset()
        .args(["--synthetic", "--per-class", "4", "-q", "--out"])
        .arg(&data)
        .assert()
        .success();
    let train = |extra: &[&str]| tiny_run(tmp.path(), &data).args(extra).assert();
    let out = train(&["--epochs", "1", "--ema-decay", "0.99"]).success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("test accuracy: "),
        "{stdout}"
    );
    // The headline is the EMA model's (EMA is on here), not the better of the two.
    let value = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout}"))
            .to_string()
    };
    assert_eq!(value("test accuracy: "), value("ema test accuracy: "));
    // Without an EMA there is one model: the headline is its accuracy and no EMA line claims one.
    let profile = tmp.path().join("profile.jsonl");
    let profile_arg = profile.to_str().unwrap();
    let out = train(&[
        "--epochs",
        "1",
        "--ema-decay",
        "0",
        "--name",
        "single",
        "--limit-train-batches",
        "1",
        "--profile-json",
        profile_arg,
    ])
    .success();
    let no_ema = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(!no_ema.contains("ema"), "{no_ema}");
    // --profile-json: one line per epoch, with the trainer's stages; the limit cut it to a step.
    let lines: Vec<Value> = std::fs::read_to_string(&profile)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["images"], 20);
    let stages: Vec<&str> = lines[0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert!(
        ["h2d", "forward", "backward", "optimizer"]
            .iter()
            .all(|s| stages.contains(s)),
        "{stages:?}"
    );
    // Training only: the evaluation's own stream (its reads, its waits) and its time stay out,
    // so one training batch is one read and no stage is busier than the epoch is long.
    let stage = |name: &str| {
        lines[0]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == name)
            .unwrap_or_else(|| panic!("no {name} stage"))
            .clone()
    };
    assert!(!stages.contains(&"eval"), "{stages:?}");
    assert_eq!(stage("read")["count"], 1);
    assert_eq!(stage("augment")["count"], 1);
    assert_eq!(stage("forward")["count"], 1);
    // The epoch line's "test loss L acc A%" is the headline's A.
    let epoch_line = no_ema
        .lines()
        .find(|l| l.starts_with("epoch   1/1:"))
        .unwrap();
    let epoch_acc = epoch_line.split("test loss ").nth(1).unwrap();
    let epoch_acc = epoch_acc
        .split(" acc ")
        .nth(1)
        .unwrap()
        .split('%')
        .next()
        .unwrap();
    assert_eq!(
        no_ema.lines().last().unwrap(),
        format!("test accuracy: {epoch_acc}%"),
        "{no_ema}"
    );
    let run = tmp.path().join("runs/tiny");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains("widths = [\n    4,") || config.contains("widths = [4, 8, 16]"),
        "{config}"
    );
    // The same name again without --resume is refused; with it, the run continues.
    train(&["--epochs", "1", "--ema-decay", "0.99"])
        .failure()
        .stderr(predicates::str::contains("--resume"));
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .current_dir(tmp.path())
        .args(["-q", "--epochs", "2", "--resume"])
        .arg(&run)
        .assert()
        .success();
    assert!(String::from_utf8(out.get_output().stdout.clone())
        .unwrap()
        .contains("epoch   2/2"));
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.csv"))
            .unwrap()
            .lines()
            .count(),
        3
    );

    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .args(["eval", "--checkpoint"])
        .arg(&run)
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        stdout.contains("test accuracy: ") && stdout.contains("checker"),
        "{stdout}"
    );
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .args(["eval", "--tta", "flip", "--checkpoint"])
        .arg(&run)
        .assert()
        .success();
    assert!(String::from_utf8(out.get_output().stdout.clone())
        .unwrap()
        .contains("test accuracy: "));

    let png = tmp.path().join("one.png");
    let reader = cifar_stream::store::Reader::open(data.join("test.store")).unwrap();
    image::RgbImage::from_raw(32, 32, reader.image(0).to_vec())
        .unwrap()
        .save(&png)
        .unwrap();
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .args(["predict", "--checkpoint"])
        .arg(&run)
        .arg(&png)
        .assert()
        .success();
    let line = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        line.contains("one.png: ") && line.trim_end().ends_with("%)"),
        "{line}"
    );
}

#[test]
fn device_check_step_bench_and_op_bench_run_on_the_cpu() {
    // check-step on the CPU holds candle's stock ops against this crate's fast ones (and f64).
    let small = [
        "--preset",
        "tiny",
        "--widths",
        "4,8,16",
        "--stem-width",
        "8",
    ];
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .args([
            "check-step",
            "--device",
            "cpu",
            "--kernels",
            "stock",
            "--images",
            "8",
        ])
        .args(small)
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let verdict = stdout.lines().last().unwrap();
    assert!(
        verdict.starts_with("check-step: logits ") && verdict.ends_with(": ok"),
        "{stdout}"
    );

    // With no slack at all, a real difference (stock and fast are not bit-identical) fails.
    Command::cargo_bin("stream-train")
        .unwrap()
        .args([
            "check-step",
            "--device",
            "cpu",
            "--kernels",
            "stock",
            "--images",
            "8",
        ])
        .args(["--tolerance", "0", "--f64-factor", "0"])
        .args(small)
        .assert()
        .failure();

    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .args(["step-bench", "--steps", "2", "--batch-size", "8"])
        .args(small)
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        stdout.contains("candle fast kernels, f32") && stdout.contains("images/s: "),
        "{stdout}"
    );
    // bf16 on the CPU: products in bf16 where the CPU has AVX512-BF16, else a clear refusal;
    // candle's own ops (stock kernels) have none either way.
    let bf16 = |kernels: &str| {
        Command::cargo_bin("stream-train")
            .unwrap()
            .args(["step-bench", "--steps", "2", "--batch-size", "8"])
            .args([
                "--device",
                "cpu",
                "--precision",
                "bf16",
                "--kernels",
                kernels,
            ])
            .args(small)
            .output()
            .unwrap()
    };
    let out = bf16("fast");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if cifar_stream::ops::bf16_products_available() {
        assert!(out.status.success(), "{stderr}");
        assert!(
            stdout.contains("candle fast kernels, bf16 on cpu"),
            "{stdout}"
        );
    } else {
        assert!(!out.status.success());
        assert!(stderr.contains("needs AVX512-BF16"), "{stderr}");
    }
    let out = bf16("stock");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs --kernels fast"), "{stderr}");

    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .args([
            "op-bench",
            "--reps",
            "1",
            "--batch-size",
            "4",
            "--kernels",
            "stock",
        ])
        .args(small)
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        stdout.contains("3x3 3>4 @32 s1") && stdout.contains("total ms per step: conv fwd"),
        "{stdout}"
    );
}

#[test]
fn eval_refuses_a_store_with_other_classes_and_predict_an_image_of_another_size() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("syn");
    prep_dataset()
        .args(["--synthetic", "--per-class", "4", "-q", "--out"])
        .arg(&data)
        .assert()
        .success();
    Command::cargo_bin("stream-train")
        .unwrap()
        .current_dir(tmp.path())
        .args([
            "--preset",
            "tiny",
            "--widths",
            "4,8,16",
            "--stem-width",
            "8",
        ])
        .args([
            "--batch-size",
            "20",
            "--epochs",
            "1",
            "--limit-train-batches",
            "1",
            "-q",
        ])
        .arg("--data")
        .arg(&data)
        .assert()
        .success();
    let run = tmp.path().join("runs/tiny");
    // A three-class store (non-ASCII class names too): the ten-class run cannot evaluate it.
    let folder = tmp.path().join("three");
    write_png_folder(&folder, &["chat", "chèvre", "貓"], 2, 2);
    let other = tmp.path().join("three-store");
    prep_dataset()
        .args(["-q", "--source"])
        .arg(&folder)
        .arg("--out")
        .arg(&other)
        .assert()
        .success();
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .args(["eval", "--checkpoint"])
        .arg(&run)
        .arg("--data")
        .arg(&other)
        .assert()
        .code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("3 classes, the run 10") && stderr.contains("test.store"),
        "{stderr}"
    );
    let big = tmp.path().join("big.png");
    image::RgbImage::new(40, 30).save(&big).unwrap();
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .args(["predict", "--checkpoint"])
        .arg(&run)
        .arg(&big)
        .assert()
        .code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("big.png") && stderr.contains("40x30") && stderr.contains("--resize"),
        "{stderr}"
    );
    // With --resize the photo is classified at the run's 32x32.
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .args(["predict", "--resize", "--checkpoint"])
        .arg(&run)
        .arg(&big)
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        stdout.contains("big.png: ") && stdout.contains('%'),
        "{stdout}"
    );
}

#[test]
fn resume_dir_means_that_folder_from_anywhere_and_a_damaged_checkpoint_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("syn");
    prep_dataset()
        .args(["--synthetic", "--per-class", "4", "-q", "--out"])
        .arg(&data)
        .assert()
        .success();
    let first = tmp.path().join("first");
    std::fs::create_dir_all(&first).unwrap();
    Command::cargo_bin("stream-train")
        .unwrap()
        .current_dir(&first)
        .args([
            "--preset",
            "tiny",
            "--widths",
            "4,8,16",
            "--stem-width",
            "8",
        ])
        .args(["--batch-size", "20", "--epochs", "1", "-q", "--data"])
        .arg(&data)
        .assert()
        .success();
    // The run moves; it is resumed from another working directory by its new path.
    let moved = tmp.path().join("elsewhere/run");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(first.join("runs/tiny"), &moved).unwrap();
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    Command::cargo_bin("stream-train")
        .unwrap()
        .current_dir(&other)
        .args(["-q", "--epochs", "2", "--resume"])
        .arg(&moved)
        .assert()
        .success();
    let metrics = std::fs::read_to_string(moved.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
    assert!(
        !other.join("runs").exists(),
        "the resume wrote into the working directory"
    );
    // --name with --resume would be ignored: it is refused.
    Command::cargo_bin("stream-train")
        .unwrap()
        .args(["--resume", "x", "--name", "y"])
        .assert()
        .code(2);

    // A flipped byte or a truncation: refused, the file named, nothing trained.
    let checkpoint = moved.join("checkpoint.safetensors");
    let good = std::fs::read(&checkpoint).unwrap();
    for damage in ["flip", "truncate"] {
        let mut bytes = good.clone();
        match damage {
            "flip" => {
                let at = bytes.len() - 100;
                bytes[at] ^= 0x10;
            }
            _ => bytes.truncate(bytes.len() / 2),
        }
        std::fs::write(&checkpoint, &bytes).unwrap();
        let out = Command::cargo_bin("stream-train")
            .unwrap()
            .args(["-q", "--epochs", "3", "--resume"])
            .arg(&moved)
            .assert()
            .code(1);
        let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
        assert!(
            stderr.contains("checkpoint.safetensors") && stderr.contains("damaged"),
            "{damage}: {stderr}"
        );
    }
}

/// A synthetic store of `per_class` images per class in `dir/syn`, and the tiny run's flags
/// without `-q` (the progress tests watch what the person sees).
fn watched_run(dir: &std::path::Path, per_class: &str) -> (std::path::PathBuf, Vec<String>) {
    let data = dir.join("syn");
    prep_dataset()
        .args(["--synthetic", "--per-class", per_class, "-q", "--out"])
        .arg(&data)
        .assert()
        .success();
    let flags = "--preset tiny --widths 4,8,16 --stem-width 8 --batch-size 20 --epochs 2";
    let mut args: Vec<String> = flags.split(' ').map(String::from).collect();
    args.extend(["--data".into(), data.display().to_string()]);
    (data, args)
}

/// Off a terminal (here stderr is a pipe): the whole run's estimate once, then plain progress
/// lines on `--log-every-seconds`, and no bar's drawing codes.
#[test]
fn progress_off_a_terminal_is_plain_lines_with_the_runs_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, args) = watched_run(tmp.path(), "10");
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .current_dir(tmp.path())
        .args(&args)
        .args(["--log-every-seconds", "0"])
        .assert()
        .success();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("estimate: the whole run needs about "),
        "{stderr}"
    );
    let lines: Vec<&str> = (stderr.lines())
        .filter(|l| l.starts_with("epoch ") && l.contains(" step "))
        .collect();
    assert!(lines.len() >= 4, "a line a step at 0 s: {stderr}");
    for line in &lines {
        assert!(
            line.contains(" img/s") && line.contains("left, run "),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with("epoch 2/2 step 5/5 ")),
        "{lines:?}"
    );
    assert!(
        !stderr.contains('\r') && !stderr.contains("\x1b["),
        "{stderr:?}"
    );
    // A negative or non-finite cadence is a usage error.
    Command::cargo_bin("stream-train")
        .unwrap()
        .args(["--log-every-seconds", "-1"])
        .assert()
        .code(2);
}

/// On a terminal (a pseudo-terminal from util-linux's `script`): the bar, whose tail holds the
/// whole run's remaining time, and no plain progress lines.
#[test]
fn progress_on_a_terminal_is_a_bar_with_the_runs_time_left() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, args) = watched_run(tmp.path(), "20");
    let bin = assert_cmd::cargo::cargo_bin("stream-train");
    let command = format!("{} {} --log-every-seconds 0", bin.display(), args.join(" "));
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(tmp.path())
        .output()
        .expect("util-linux's script runs the command on a pseudo-terminal");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{seen}");
    assert!(seen.contains("epoch 1/2 ["), "no bar drawn: {seen}");
    assert!(
        seen.contains("/10 run ") && seen.contains(" s left"),
        "{seen}"
    );
    assert!(
        !seen.contains("epoch 1/2 step "),
        "plain lines on a terminal: {seen}"
    );
    assert!(
        seen.contains("estimate: the whole run needs about "),
        "{seen}"
    );
}
