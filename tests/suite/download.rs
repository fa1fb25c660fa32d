//! `--download` against a local HTTP server on 127.0.0.1 (no test reaches the internet).

use std::path::Path;
use std::sync::Arc;
use std::thread;

use crate::common::*;
use cifar_stream::source::{download, Error as SourceError};
use indicatif::ProgressBar;

/// Serves `body` at every path until `requests` requests have been answered; returns the base URL.
fn serve(body: Vec<u8>, requests: usize) -> String {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    thread::spawn(move || {
        for _ in 0..requests {
            let Ok(req) = server.recv() else { return };
            let resp = if req.url().ends_with("/cifar-10-binary.tar.gz") {
                tiny_http::Response::from_data(body.clone())
            } else {
                tiny_http::Response::from_data(b"no".to_vec()).with_status_code(404)
            };
            let _ = req.respond(resp);
        }
    });
    url
}

fn fixture_archive(dir: &Path) -> Vec<u8> {
    let bin = write_official_dir(dir, &official_files(4));
    let archive = dir.join("fixture.tar.gz");
    tar_dir(&bin, &archive, true);
    std::fs::read(archive).unwrap()
}

#[test]
fn download_checks_md5_and_keeps_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let body = fixture_archive(tmp.path());
    let md5 = {
        let p = tmp.path().join("fixture.tar.gz");
        download::md5_file(&p).unwrap()
    };
    let base = serve(body.clone(), 1);
    let dest = tmp.path().join("dl/cifar-10-binary.tar.gz");
    let got = download::fetch(
        &format!("{base}/cifar-10-binary.tar.gz"),
        &dest,
        &md5,
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), body);
    // Second call: already there with the right md5, so no request is made (the server is gone).
    download::fetch(
        &format!("{base}/cifar-10-binary.tar.gz"),
        &dest,
        &md5,
        &ProgressBar::hidden(),
    )
    .unwrap();
}

#[test]
fn wrong_md5_is_refused_and_nothing_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let body = fixture_archive(tmp.path());
    let base = serve(body, 1);
    let dest = tmp.path().join("dl/cifar-10-binary.tar.gz");
    let err = download::fetch(
        &format!("{base}/cifar-10-binary.tar.gz"),
        &dest,
        download::OFFICIAL_MD5,
        &ProgressBar::hidden(),
    )
    .unwrap_err();
    assert!(matches!(err, SourceError::Md5Mismatch { .. }), "{err:?}");
    assert_eq!(list(&tmp.path().join("dl")), Vec::<String>::new());
}

#[test]
fn http_error_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let base = serve(Vec::new(), 1);
    let dest = tmp.path().join("cifar-10-binary.tar.gz");
    let err = download::fetch(
        &format!("{base}/missing"),
        &dest,
        download::OFFICIAL_MD5,
        &ProgressBar::hidden(),
    )
    .unwrap_err();
    assert!(matches!(err, SourceError::Download { .. }), "{err:?}");
    assert!(err.to_string().contains("404"), "{err}");
    assert!(!dest.exists());
}

#[test]
fn cli_download_then_prep() {
    let tmp = tempfile::tempdir().unwrap();
    let body = fixture_archive(tmp.path());
    let md5 = download::md5_file(&tmp.path().join("fixture.tar.gz")).unwrap();
    let base = serve(body, 1);
    let out = tmp.path().join("datasets/cifar10");
    let assert = assert_cmd::Command::cargo_bin("prep-dataset")
        .unwrap()
        .args(["--download", "-q", "--json", "--url"])
        .arg(format!("{base}/cifar-10-binary.tar.gz"))
        .args(["--md5", &md5, "--out"])
        .arg(&out)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&assert.get_output().stdout).unwrap();
    assert_eq!(v["splits"]["train"]["images"], 20);
    assert!(tmp
        .path()
        .join("datasets/downloads/cifar-10-binary.tar.gz")
        .is_file());
}
