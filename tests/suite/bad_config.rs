//! Every configuration value a user can get wrong, by flag or by TOML file: `stream-train` exits
//! with status 1 and names the key (and never hangs or panics), before touching any data.

use assert_cmd::Command;

fn stream_train() -> Command {
    let mut c = Command::cargo_bin("stream-train").unwrap();
    c.timeout(std::time::Duration::from_secs(30));
    c
}

/// Runs `--print-config` (which resolves and validates) with `args`; expects exit 1 naming `key`.
fn refused(args: &[&str], key: &str) {
    let out = stream_train()
        .args(["--preset", "tiny", "--print-config"])
        .args(args)
        .assert()
        .code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains(key) && !stderr.contains("panicked"),
        "{args:?}: expected an error naming {key:?}, got {stderr}"
    );
}

#[test]
fn each_bad_flag_value_is_refused_naming_its_key() {
    let cases: &[(&[&str], &str)] = &[
        (&["--epochs", "0"], "epochs"),
        (&["--batch-size", "0"], "batch_size"),
        (&["--prefetch", "0"], "prefetch"),
        (&["--threads", "5000"], "threads"),
        (&["--eval-every", "0"], "eval_every"),
        (&["--save-every-steps", "0"], "save_every_steps"),
        (&["--limit-train-batches", "0"], "limit_train_batches"),
        (&["--ema-decay", "1"], "ema_decay"),
        (&["--ema-decay", "NaN"], "ema_decay"),
        (&["--label-smoothing", "1"], "label_smoothing"),
        (&["--stem-width", "3"], "model.stem_width"),
        (&["--dropout", "1"], "model.dropout"),
        (&["--se-ratio=-0.5"], "model.se_ratio"),
        (&["--blocks", "1,2"], "model.blocks"),
        (&["--widths", "0,8,16"], "model.widths"),
        (&["--widths", "8,16,99999999"], "model.widths"),
        (&["--momentum", "1"], "optim.momentum"),
        (&["--weight-decay=-1"], "optim.weight_decay"),
        (&["--lr", "0"], "schedule.lr"),
        (&["--lr", "inf"], "schedule.lr"),
        (&["--min-lr", "1"], "schedule.min_lr"),
        (&["--restart-every", "0"], "schedule.restart_every"),
        (&["--restart-mult", "0.5"], "schedule.restart_mult"),
        (
            &["--schedule", "multi-step", "--gamma", "0"],
            "schedule.gamma",
        ),
        (
            &["--schedule", "multi-step", "--milestones=-5"],
            "schedule.milestones",
        ),
        (&["--warmup-epochs=-1"], "schedule.warmup_epochs"),
        (&["--randaugment-n", "100"], "augment.randaugment_n"),
        (&["--crop-padding", "100"], "augment.crop_padding"),
        (&["--cutout-holes", "100"], "augment.cutout_holes"),
        (
            &["--cutout-holes", "1", "--cutout-length", "0"],
            "augment.cutout_length",
        ),
        (&["--name", "a/b"], "name"),
    ];
    for (args, key) in cases {
        refused(args, key);
    }
}

#[test]
fn each_bad_toml_value_or_unknown_key_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("eval_batch_size = 0", "eval_batch_size"),
        ("[augment]\nrandaugment_m = 11", "augment.randaugment_m"),
        ("[schedule]\nrestart_every = 0.0", "schedule.restart_every"),
        ("[model]\nnum_classes = 1", "model.num_classes"),
        ("[model]\nin_channels = 9", "model.in_channels"),
        ("[model]\nexpansion = 0", "model.expansion"),
        // Unknown keys, at the top and in every table.
        ("epochz = 3", "epochz"),
        ("[schedule]\nrestat_every = 3.0", "restat_every"),
        ("[augment]\ncutout = 3", "cutout"),
        ("[model]\nwidht = [1]", "widht"),
        ("[optim]\nnesterow = true", "nesterow"),
        // Wrong types and malformed TOML.
        ("epochs = \"ten\"", "epochs"),
        ("epochs = -3", "epochs"),
        ("[schedule\nlr = 1", "config.toml"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("case{i}.config.toml"));
        std::fs::write(&path, text).unwrap();
        refused(&["--config", path.to_str().unwrap()], key);
    }
}

#[test]
fn zero_counts_in_the_bench_and_check_commands_are_usage_errors() {
    for args in [
        &["augment-bench", "--batch-size", "0"][..],
        &["augment-bench", "--batches", "0"],
        &["op-bench", "--reps", "0"],
        &["step-bench", "--steps", "0"],
        &["check-step", "--images", "0"],
        &["augment-preview", "--out", "x.png", "--images", "0"],
    ] {
        stream_train().args(args).assert().code(2);
    }
}

#[test]
fn an_unwritable_trace_path_is_an_error_naming_it_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("no/such/folder/trace.json");
    let out = stream_train()
        .args(["--preset", "tiny", "--pipeline-only", "--trace"])
        .arg(&trace)
        .assert()
        .code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("trace.json") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
