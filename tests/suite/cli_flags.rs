//! Every command accepts exactly the flags its code reads: `--help` lists those and no others,
//! a flag another command reads is a usage error (exit 2), and the enums a flag and a TOML key
//! share spell their values the same way in both.

use std::collections::BTreeSet;

use assert_cmd::Command;
use clap::ValueEnum;

const MODEL: &[&str] = &[
    "--stem-width",
    "--se-ratio",
    "--dropout",
    "--blocks",
    "--widths",
    "--zero-init-last-bn",
];
const OPTIM: &[&str] = &[
    "--lr",
    "--weight-decay",
    "--momentum",
    "--no-nesterov",
    "--no-decay-bn-bias",
    "--label-smoothing",
];
const SCHEDULE: &[&str] = &[
    "--schedule",
    "--restart-every",
    "--restart-mult",
    "--min-lr",
    "--milestones",
    "--gamma",
    "--warmup-epochs",
];
const DATA: &[&str] = &["--data", "--epochs", "--prefetch", "--limit-train-batches"];
const RUN: &[&str] = &[
    "--name",
    "--runs",
    "--ema-decay",
    "--eval-every",
    "--save-every",
    "--save-every-steps",
    "--sync-bn",
    "--no-tensorboard",
    "--tta",
];
const GRAPH: &[&str] = &["--cuda-graph", "--no-cuda-graph"];
const AUGMENT: &[&str] = &[
    "--augment",
    "--randaugment-n",
    "--randaugment-m",
    "--no-crop",
    "--crop-padding",
    "--crop-fill",
    "--no-flip",
    "--cutout-holes",
    "--cutout-length",
];
const SOURCE: &[&str] = &["--preset", "--config"];

/// The long flags a command's `--help` lists (the first flag of each option line).
fn listed_flags(command: &[&str]) -> BTreeSet<String> {
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .args(command)
        .arg("--help")
        .assert()
        .success();
    let help = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-q, ").unwrap_or(l);
            let l = l.strip_prefix("-n, ").unwrap_or(l);
            let l = l.strip_prefix("-k, ").unwrap_or(l);
            let l = l.strip_prefix("-h, ").unwrap_or(l);
            let l = l.strip_prefix("-V, ").unwrap_or(l);
            let flag = l.strip_prefix("--")?;
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            Some(format!("--{name}"))
        })
        .collect()
}

fn set(groups: &[&[&str]]) -> BTreeSet<String> {
    groups
        .iter()
        .flat_map(|g| g.iter())
        .map(|s| s.to_string())
        .chain(["--help".to_string()])
        .collect()
}

#[test]
fn each_command_lists_exactly_the_flags_it_reads() {
    let main = [
        "--summary",
        "--print-config",
        "--resume",
        "--pipeline-only",
        "--drop-last",
        "--trace",
        "--profile-json",
        "--quiet",
        "--log-every-seconds",
        "--nccl",
        "--device",
        "--kernels",
        "--precision",
        "--no-tf32",
        "--batch-size",
        "--seed",
        "--threads",
        "--version",
    ];
    let cases: Vec<(&[&str], BTreeSet<String>)> = vec![
        (
            &[],
            set(&[
                SOURCE, MODEL, OPTIM, SCHEDULE, DATA, RUN, GRAPH, AUGMENT, &main,
            ]),
        ),
        (
            &["step-bench"],
            set(&[
                SOURCE,
                MODEL,
                OPTIM,
                &[
                    "--steps",
                    "--device",
                    "--kernels",
                    "--precision",
                    "--no-tf32",
                ],
                &["--batch-size", "--seed", "--threads"],
                GRAPH,
            ]),
        ),
        (
            &["check-step"],
            set(&[
                SOURCE,
                MODEL,
                &["--images", "--tolerance", "--f64-factor", "--cpu-kernels"],
                &[
                    "--device",
                    "--kernels",
                    "--precision",
                    "--no-tf32",
                    "--seed",
                ],
            ]),
        ),
        (
            &["op-bench"],
            set(&[
                SOURCE,
                MODEL,
                &["--reps", "--device", "--kernels", "--batch-size", "--seed"],
            ]),
        ),
        (&["check-ops"], set(&[&["--device", "--kernels", "--all"]])),
        (
            &["eval"],
            set(&[&[
                "--checkpoint",
                "--data",
                "--train-split",
                "--raw",
                "--tta",
                "--device",
            ]]),
        ),
        (
            &["predict"],
            set(&[&["--checkpoint", "--raw", "--tta", "--device", "--resize"]]),
        ),
        (
            &["augment-preview"],
            set(&[
                AUGMENT,
                &[
                    "--data",
                    "--out",
                    "--seed",
                    "--epoch",
                    "--images",
                    "--versions",
                    "--epochs",
                ],
            ]),
        ),
        (
            &["augment-bench"],
            set(&[
                AUGMENT,
                &[
                    "--data",
                    "--batch-size",
                    "--batches",
                    "--threads",
                    "--epoch",
                    "--seed",
                    "--epochs",
                ],
            ]),
        ),
    ];
    for (command, want) in cases {
        let got = listed_flags(command);
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "stream-train {command:?}: missing {missing:?}, unexpected {extra:?}"
        );
    }
}

#[test]
fn a_flag_the_command_does_not_read_is_a_usage_error() {
    let refused: &[&[&str]] = &[
        &["step-bench", "--trace", "t.json"],
        &["step-bench", "--epochs", "3"],
        &["step-bench", "--ema-decay", "0.9"],
        &["check-step", "--batch-size", "4"],
        &["check-step", "--lr", "0.1"],
        &["op-bench", "--precision", "bf16"],
        &["op-bench", "--lr", "0.1"],
        &["eval", "--checkpoint", "x", "--epochs", "3"],
        &["predict", "--checkpoint", "x", "--data", "d", "a.png"],
        &["--summary", "--data", "somewhere"],
        &["--summary", "--lr", "0.1"],
        &["--summary", "--trace", "t.json"],
        &["--pipeline-only", "--lr", "0.1"],
        &["--pipeline-only", "--device", "cpu"],
        &["--pipeline-only", "--stem-width", "8"],
        &["--pipeline-only", "--ema-decay", "0.9"],
        &["--print-config", "--trace", "t.json"],
        &["--print-config", "--device", "cpu"],
        &["--drop-last"],
    ];
    for args in refused {
        let out = Command::cargo_bin("stream-train")
            .unwrap()
            .args(*args)
            .assert()
            .code(2);
        let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
        assert!(
            stderr.contains("cannot be used with")
                || stderr.contains("unexpected argument")
                || stderr.contains("required arguments were not provided"),
            "{args:?}: {stderr}"
        );
    }
}

/// clap's name of each value of `E` equals serde's (what `config.toml` holds).
fn same_names<E: ValueEnum + serde::Serialize>() {
    for v in E::value_variants() {
        let clap = v.to_possible_value().unwrap().get_name().to_string();
        let serde = serde_json::to_value(v).unwrap();
        assert_eq!(
            serde.as_str(),
            Some(clap.as_str()),
            "{} spells a value differently in flags and TOML",
            std::any::type_name::<E>()
        );
    }
}

#[test]
fn flag_values_and_toml_values_are_spelled_the_same() {
    same_names::<cifar_stream::ops::Kernels>();
    same_names::<cifar_stream::model::Precision>();
    same_names::<cifar_stream::train::Tta>();
    same_names::<cifar_stream::train::ScheduleKind>();
    same_names::<cifar_stream::augment::PolicyName>();
    same_names::<cifar_stream::augment::ops::PadFill>();
}
