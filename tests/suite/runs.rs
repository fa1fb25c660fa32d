//! `stream-train runs`: one row per run folder, read from its files; a damaged folder is a row
//! that says why and does not stop the table.

use std::fs;
use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

use crate::common::*;

/// `stream-train runs --runs DIR [extra]`'s standard output.
fn table(runs: &Path, extra: &[&str]) -> String {
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .arg("runs")
        .arg("--runs")
        .arg(runs)
        .args(extra)
        .assert()
        .success();
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

/// Copies run folder `from` to `to` (its files, not its lock).
fn copy_run(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for f in ["config.toml", "metrics.jsonl"] {
        fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn the_table_shows_every_state_and_a_damaged_folder_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synthetic_store(tmp.path(), 4);
    let runs = tmp.path().join("runs");
    tiny_run(tmp.path(), &data)
        .args(["--epochs", "2", "--name", "done"])
        .assert()
        .success();
    // A learning rate of 100 diverges: the run leaves its note.
    tiny_run(tmp.path(), &data)
        .args([
            "--epochs",
            "3",
            "--lr",
            "100",
            "--warmup-epochs",
            "0",
            "--name",
            "wild",
        ])
        .assert()
        .failure();
    // Planned for more epochs than it has: interrupted.
    copy_run(&runs.join("done"), &runs.join("cut"));
    let config = fs::read_to_string(runs.join("cut/config.toml")).unwrap();
    let config = config.replace("epochs = 2\n", "epochs = 5\n");
    fs::write(runs.join("cut/config.toml"), config).unwrap();
    // Damaged two ways.
    fs::create_dir_all(runs.join("broken")).unwrap();
    fs::write(runs.join("broken/config.toml"), "epochs = [").unwrap();
    copy_run(&runs.join("done"), &runs.join("torn"));
    fs::write(runs.join("torn/metrics.jsonl"), "{\"epoch\": 0, \"lr\"").unwrap();
    // A trainer's lock held: running.
    copy_run(&runs.join("done"), &runs.join("live"));
    let lock = fs::File::create(runs.join("live/.lock")).unwrap();
    lock.try_lock().unwrap();
    // Not a run: ignored.
    fs::create_dir_all(runs.join("notes")).unwrap();

    let text = table(&runs, &[]);
    let row = |name: &str| row_of(&text, name);
    assert!(text.lines().next().unwrap().starts_with("name "), "{text}");
    assert!(
        row("done").contains(" tiny ") && row("done").contains(" 2/2 "),
        "{text}"
    );
    assert!(row("done").ends_with("finished"), "{text}");
    assert!(row("done").contains('%'), "{text}");
    assert!(
        row("cut").contains(" 2/5 ") && row("cut").ends_with("interrupted"),
        "{text}"
    );
    assert!(
        row("wild").contains("diverged: the run diverged in epoch"),
        "{text}"
    );
    assert!(row("broken").contains("damaged: config.toml"), "{text}");
    assert!(
        row("torn").contains("damaged: metrics.jsonl line 1"),
        "{text}"
    );
    assert!(row("live").ends_with("running"), "{text}");
    assert!(!text.contains("notes"), "{text}");

    // --json: one object per run, the same facts.
    let rows: Vec<Value> = (table(&runs, &["--json"]).lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    let by_name = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap();
    assert_eq!(by_name("done")["state"], "finished");
    assert_eq!(by_name("done")["epochs_done"], 2);
    assert_eq!(by_name("done")["epochs"], 2);
    assert!(by_name("done")["final_accuracy"].as_f64().is_some());
    assert_eq!(by_name("live")["state"], "running");
    assert_eq!(by_name("broken")["state"], "damaged");
    assert!(by_name("wild")["reason"]
        .as_str()
        .unwrap()
        .contains("diverged"));
    drop(lock);
    assert_eq!(
        table(&runs, &["--json"]).matches("\"running\"").count(),
        0,
        "lock let go"
    );
    // Trained again in its folder, the diverged run's note goes.
    tiny_run(tmp.path(), &data)
        .args(["--epochs", "1", "--name", "wild"])
        .assert()
        .success();
    assert!(row_of(&table(&runs, &[]), "wild").ends_with("finished"));
}

fn row_of(text: &str, name: &str) -> String {
    (text.lines())
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{text}"))
        .to_string()
}

#[test]
fn a_missing_folder_is_an_error_that_names_it() {
    let out = Command::cargo_bin("stream-train")
        .unwrap()
        .args(["runs", "--runs", "no/such/folder"])
        .assert()
        .failure();
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(err.contains("no/such/folder"), "{err}");
}
