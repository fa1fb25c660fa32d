//! The shared real CIFAR-10 JPEG archive preps to 50,000 / 10,000 images, 5,000 / 1,000 per class.
//!
//! Reads `$CIFAR_STREAM_SHARED/datasets/cifar10-jpeg.tar.gz` (default: `../shared` beside the
//! repository). Skipped with a note when absent, except under `CI=true`, where absence fails.

use std::path::PathBuf;

use cifar_stream::prep;
use cifar_stream::source::{self, Kind, CIFAR10_CLASSES};
use cifar_stream::store::{Reader, Split};
use indicatif::ProgressBar;

fn shared_archive() -> Option<PathBuf> {
    let shared = std::env::var_os("CIFAR_STREAM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let archive = shared.join("datasets/cifar10-jpeg.tar.gz");
    if archive.is_file() {
        return Some(archive);
    }
    let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    assert!(
        !ci,
        "CI=true but {} is missing (set CIFAR_STREAM_SHARED)",
        archive.display()
    );
    eprintln!(
        "skipping: {} not found (set CIFAR_STREAM_SHARED)",
        archive.display()
    );
    None
}

#[test]
fn shared_jpeg_archive_preps_to_the_cifar10_counts() {
    let Some(archive) = shared_archive() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let bar = ProgressBar::hidden();
    let (kind, dataset) = source::load(&archive, &bar).unwrap();
    assert_eq!(kind, Kind::ImageArchive);
    let summary = prep::write_store(&dataset, out.path(), false, &bar).unwrap();
    assert_eq!(summary.classes, CIFAR10_CLASSES);
    assert_eq!(summary.splits["train"].images, 50_000);
    assert_eq!(summary.splits["test"].images, 10_000);
    assert_eq!(summary.splits["train"].class_counts, vec![5_000; 10]);
    assert_eq!(summary.splits["test"].class_counts, vec![1_000; 10]);
    // Channel means of CIFAR-10 train are about (0.491, 0.482, 0.447); JPEG moves them slightly.
    let mean = &summary.splits["train"].mean;
    for (m, want) in mean.iter().zip([0.491, 0.482, 0.447]) {
        assert!((m - want).abs() < 0.01, "train mean {mean:?}");
    }
    let train = Reader::open(Split::Train.path_in(out.path())).unwrap();
    train.verify().unwrap();
}
