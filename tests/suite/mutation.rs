//! Hostile files: thousands of corrupted stores and source archives, made by a seeded loop of
//! byte flips, truncations, extensions, zeroed ranges and header edits with their checksums
//! recomputed (so that the checks behind the checksum are reached too). Whatever the damage,
//! opening never panics or aborts, and every error names the file. The counts are printed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use crate::common::*;
use cifar_stream::source::{self, synthetic};
use cifar_stream::store::{Reader, Split, HEADER_LEN};
use indicatif::ProgressBar;

/// One damage done to `bytes`, of kind `kind % 5`, drawn from `rng`; returns its name.
fn mutate(rng: &mut fastrand::Rng, bytes: &mut Vec<u8>, kind: usize) -> &'static str {
    let n = bytes.len();
    match kind % 5 {
        0 => {
            for _ in 0..rng.usize(1..=8) {
                let at = rng.usize(0..n);
                bytes[at] ^= 1 << rng.u8(0..8);
            }
            "flip"
        }
        1 => {
            bytes.truncate(rng.usize(0..n));
            "truncate"
        }
        2 => {
            let extra = rng.usize(1..4096);
            bytes.extend((0..extra).map(|_| rng.u8(..)));
            "extend"
        }
        3 => {
            let at = rng.usize(0..n);
            let len = rng.usize(1..=(n - at).min(512));
            bytes[at..at + len].fill(0);
            "zero"
        }
        _ => {
            // A random field of the first 256 bytes set to an extreme or random value.
            let at = rng.usize(0..248) & !3;
            let value: u64 = match rng.u8(0..4) {
                0 => u64::MAX,
                1 => 0,
                2 => 1 << rng.u32(0..64),
                _ => rng.u64(..),
            };
            let width = if rng.bool() { 4 } else { 8 };
            let end = (at + width).min(n);
            bytes[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
            "edit"
        }
    }
}

/// The store header's own checksum, recomputed after an edit (as a forger would).
fn reseal_store_header(bytes: &mut [u8]) {
    if bytes.len() >= HEADER_LEN {
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..HEADER_LEN - 8]);
        bytes[HEADER_LEN - 8..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
    }
}

/// Runs `f`; a panic fails the test with the case that caused it.
fn no_panic<T>(case: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => panic!("{case}: panicked"),
    }
}

#[test]
fn thousands_of_corrupted_stores_never_panic_and_every_error_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bar = ProgressBar::hidden();
    let good = tmp.path().join("good");
    cifar_stream::prep::write_store(&synthetic::generate(2, 1, &bar), &good, false, &bar).unwrap();
    let original = std::fs::read(Split::Train.path_in(&good)).unwrap();
    let path = tmp.path().join("victim.store");
    let mut rng = fastrand::Rng::with_seed(14);
    let (mut cases, mut refused) = (0, 0);
    for case in 0..3000 {
        let mut bytes = original.clone();
        let kind = mutate(&mut rng, &mut bytes, case);
        if kind == "edit" || (kind == "flip" && case % 2 == 0) {
            reseal_store_header(&mut bytes);
        }
        if bytes == original {
            continue;
        }
        std::fs::write(&path, &bytes).unwrap();
        cases += 1;
        let name = format!("store case {case} ({kind})");
        let outcome = no_panic(&name, || match Reader::open(&path) {
            Err(e) => Err(e.to_string()),
            Ok(r) => {
                // Whatever opens must read whole: every image and label, then the checksum.
                for i in 0..r.len() {
                    std::hint::black_box((r.image(i).len(), r.label(i)));
                }
                r.verify().map_err(|e| e.to_string())
            }
        });
        match outcome {
            Err(message) => {
                assert!(message.contains("victim.store"), "{name}: {message}");
                refused += 1;
            }
            // A resealed edit of a statistic leaves a store that is valid, only different.
            Ok(()) => assert!(kind == "edit" || kind == "flip", "{name}: accepted"),
        }
    }
    eprintln!("stores: {cases} corrupted, {refused} refused with the file named, none panicked");
    assert!(
        cases >= 2900 && refused * 10 >= cases * 9,
        "{refused} of {cases}"
    );
}

/// Sets the size field of the tar header at `at` and recomputes that header's checksum.
fn forge_tar_size(bytes: &mut [u8], at: usize, size: u64) {
    let field = format!("{size:011o}\0");
    if field.len() == 12 {
        bytes[at + 124..at + 136].copy_from_slice(field.as_bytes());
    } else {
        // Too big for octal: GNU's base-256 form (high bit set, big-endian).
        bytes[at + 124] = 0x80;
        bytes[at + 128..at + 136].copy_from_slice(&size.to_be_bytes());
    }
    bytes[at + 148..at + 156].fill(b' ');
    let sum: u32 = bytes[at..at + 512].iter().map(|&b| b as u32).sum();
    bytes[at + 148..at + 156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// Offsets of the tar headers in an uncompressed archive.
fn tar_headers(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= bytes.len() && bytes[at..at + 512].iter().any(|&b| b != 0) {
        out.push(at);
        let size = std::str::from_utf8(&bytes[at + 124..at + 135])
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim_matches(['\0', ' ']), 8).ok())
            .unwrap_or(0);
        at += 512 + (size as usize).div_ceil(512) * 512;
    }
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Loads `path` as a dataset source; an error must name it.
fn load_names_the_file(path: &Path, case: &str) -> bool {
    let bar = ProgressBar::hidden();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    match no_panic(case, || source::load(path, &bar).map(|_| ())) {
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains(&name), "{case}: {message}");
            true
        }
        Ok(()) => false,
    }
}

#[test]
fn thousands_of_corrupted_archives_never_panic_and_every_error_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    // An official-format archive (ten records per batch file) and a PNG image folder, as tar.
    let official = write_official_dir(&tmp.path().join("o"), &official_files(10));
    let official_tar = tmp.path().join("official.tar");
    tar_dir(&official, &official_tar, false);
    let folder = tmp.path().join("images");
    write_png_folder(&folder, &["cat", "dog", "ship"], 2, 1);
    let folder_tar = tmp.path().join("images.tar");
    tar_dir(&folder, &folder_tar, false);

    let mut rng = fastrand::Rng::with_seed(1414);
    let (mut cases, mut refused) = (0, 0);
    for (source_name, tar_path) in [("official", &official_tar), ("images", &folder_tar)] {
        let original = std::fs::read(tar_path).unwrap();
        let headers = tar_headers(&original);
        assert!(
            headers.len() > 5,
            "{source_name}: {} headers",
            headers.len()
        );
        for case in 0..1400 {
            let mut bytes = original.clone();
            let kind = if case % 6 == 5 {
                // A header that claims a huge (or just wrong) size, with a valid checksum.
                let at = headers[rng.usize(0..headers.len())];
                let size = match rng.u8(0..3) {
                    0 => u64::MAX >> 1,
                    1 => 1 << rng.u32(20..62),
                    _ => rng.u64(0..100_000),
                };
                forge_tar_size(&mut bytes, at, size);
                "forged size"
            } else {
                mutate(&mut rng, &mut bytes, case)
            };
            if bytes == original {
                continue;
            }
            // Half the cases go through gzip (the damage inside the compressed stream), and a
            // few damage the gzip stream itself.
            let (bytes, ext) = match case % 4 {
                0 | 1 => (bytes, "tar"),
                2 => (gzip(&bytes), "tar.gz"),
                _ => {
                    let mut gz = gzip(&original);
                    mutate(&mut rng, &mut gz, case + 1);
                    (gz, "tar.gz")
                }
            };
            let path = tmp.path().join(format!("{source_name}-victim.{ext}"));
            std::fs::write(&path, &bytes).unwrap();
            cases += 1;
            if load_names_the_file(&path, &format!("{source_name} case {case} ({kind}, {ext})")) {
                refused += 1;
            }
        }
    }
    eprintln!("archives: {cases} corrupted, {refused} refused with the file named, none panicked");
    assert!(cases >= 2500, "{cases}");
    assert!(refused * 2 >= cases, "only {refused} of {cases} refused");
}

#[test]
fn prep_dataset_on_a_damaged_archive_exits_1_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let official = write_official_dir(&tmp.path().join("o"), &official_files(10));
    let tar = tmp.path().join("official.tar");
    tar_dir(&official, &tar, false);
    let original = std::fs::read(&tar).unwrap();
    let headers = tar_headers(&original);
    let mut rng = fastrand::Rng::with_seed(7);
    for case in 0..12 {
        let mut bytes = original.clone();
        if case % 2 == 0 {
            forge_tar_size(&mut bytes, headers[1 + case % (headers.len() - 1)], 1 << 40);
        } else {
            bytes.truncate(rng.usize(512..original.len() / 2));
        }
        let path = tmp.path().join("damaged.tar");
        std::fs::write(&path, &bytes).unwrap();
        let out = tmp.path().join(format!("store{case}"));
        let result = assert_cmd::Command::cargo_bin("prep-dataset")
            .unwrap()
            .args(["-q", "--source"])
            .arg(&path)
            .arg("--out")
            .arg(&out)
            .assert()
            .code(1);
        let stderr = String::from_utf8(result.get_output().stderr.clone()).unwrap();
        assert!(stderr.contains("damaged.tar"), "case {case}: {stderr}");
        assert!(!out.exists(), "case {case}: {} was written", out.display());
    }
}
