//! Sources → store → read back: every pixel and label identical, in order.

use std::path::Path;

use crate::common::*;
use cifar_stream::prep;
use cifar_stream::source::{self, synthetic, Kind};
use cifar_stream::store::{Reader, Split, HEADER_LEN};
use indicatif::ProgressBar;

fn prep_to(source_path: &Path, out: &Path) -> Kind {
    let bar = ProgressBar::hidden();
    let (kind, dataset) = source::load(source_path, &bar).unwrap();
    prep::write_store(&dataset, out, false, &bar).unwrap();
    kind
}

/// Checks a store against the official fixture files record by record.
fn assert_matches_official(out: &Path, files: &[(String, Vec<u8>)]) {
    let train = Reader::open(Split::Train.path_in(out)).unwrap();
    let test = Reader::open(Split::Test.path_in(out)).unwrap();
    train.verify().unwrap();
    test.verify().unwrap();
    let expect = |files: &[(String, Vec<u8>)], reader: &Reader| {
        let records: Vec<&[u8]> = files.iter().flat_map(|(_, d)| d.chunks(RECORD)).collect();
        assert_eq!(reader.len(), records.len());
        for (i, rec) in records.iter().enumerate() {
            assert_eq!(reader.label(i), rec[0], "label {i}");
            assert_eq!(reader.image(i), record_to_hwc(rec).as_slice(), "image {i}");
        }
    };
    expect(&files[..5], &train);
    expect(&files[5..], &test);
    assert_eq!(train.classes()[0], "airplane");
}

#[test]
fn official_tar_gz_round_trips_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let files = official_files(7);
    let bin = write_official_dir(tmp.path(), &files);
    let archive = tmp.path().join("cifar-10-binary.tar.gz");
    tar_dir(&bin, &archive, true);
    let out = tmp.path().join("store");
    assert_eq!(prep_to(&archive, &out), Kind::OfficialArchive);
    assert_matches_official(&out, &files);
}

#[test]
fn official_folder_round_trips_exactly_from_itself_or_its_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let files = official_files(5);
    let bin = write_official_dir(tmp.path(), &files);
    let out = tmp.path().join("a");
    assert_eq!(prep_to(&bin, &out), Kind::OfficialFolder);
    assert_matches_official(&out, &files);
    let out = tmp.path().join("b");
    assert_eq!(prep_to(tmp.path(), &out), Kind::OfficialFolder);
    assert_matches_official(&out, &files);
}

#[test]
fn png_folder_round_trips_exactly_as_folder_tar_and_tar_gz() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pets");
    // Names deliberately out of alphabetical order on creation.
    let classes = ["zebra", "cat", "dog"];
    write_png_folder(&root, &classes, 4, 2);
    let tar = tmp.path().join("pets.tar");
    let tgz = tmp.path().join("pets.tar.gz");
    tar_dir(&root, &tar, false);
    tar_dir(&root, &tgz, true);
    let outs = tempfile::tempdir().unwrap();
    let parent = tempfile::tempdir().unwrap();
    let nested = parent.path().join("pets");
    std::fs::rename(&root, &nested).unwrap();
    for (src, kind) in [
        (nested.clone(), Kind::ImageFolder),
        // The parent of a single dataset folder is found too.
        (parent.path().to_path_buf(), Kind::ImageFolder),
        (tar, Kind::ImageArchive),
        (tgz, Kind::ImageArchive),
    ] {
        let out = outs.path().join(format!(
            "out-{}",
            src.file_name().unwrap().to_string_lossy()
        ));
        assert_eq!(prep_to(&src, &out), kind, "{}", src.display());
        let train = Reader::open(Split::Train.path_in(&out)).unwrap();
        let test = Reader::open(Split::Test.path_in(&out)).unwrap();
        assert_eq!(train.classes(), ["cat", "dog", "zebra"]);
        // Store order: classes sorted by name, files sorted by name within a class.
        for (reader, n, offset) in [(&train, 4, 0), (&test, 2, 10_000)] {
            assert_eq!(reader.len(), 3 * n);
            for (label, class) in ["cat", "dog", "zebra"].iter().enumerate() {
                let k = classes.iter().position(|c| c == class).unwrap();
                for i in 0..n {
                    let at = label * n + i;
                    assert_eq!(reader.label(at) as usize, label);
                    assert_eq!(
                        reader.image(at),
                        fixture_pixels(32, 32, k, offset + i).as_slice()
                    );
                }
            }
        }
    }
}

#[test]
fn synthetic_store_holds_the_generated_pixels_and_true_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let bar = ProgressBar::hidden();
    let dataset = synthetic::generate(12, 3, &bar);
    let summary = prep::write_store(&dataset, tmp.path(), false, &bar).unwrap();
    let train = Reader::open(Split::Train.path_in(tmp.path())).unwrap();
    assert_eq!(train.pixels_all(), dataset.train.pixels.as_slice());
    assert_eq!(train.labels(), dataset.train.labels.as_slice());
    assert_eq!(summary.splits["train"].class_counts, vec![12; 10]);
    assert_eq!(summary.splits["test"].class_counts, vec![3; 10]);
    // Mean and std recomputed here in f64, independently of the writer.
    for c in 0..3 {
        let vals: Vec<f64> = train
            .pixels_all()
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| v as f64 / 255.0)
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
        assert!((train.header().mean[c] - mean).abs() < 1e-9);
        assert!((train.header().std[c] - var.sqrt()).abs() < 1e-9);
    }
}

#[test]
fn reader_views_are_zero_copy_into_the_page_aligned_map() {
    let tmp = tempfile::tempdir().unwrap();
    let bar = ProgressBar::hidden();
    prep::write_store(&synthetic::generate(3, 1, &bar), tmp.path(), false, &bar).unwrap();
    let reader = Reader::open(Split::Train.path_in(tmp.path())).unwrap();
    let base = reader.pixels_all().as_ptr();
    assert_eq!(
        base as usize % 4096,
        0,
        "pixel block is page-aligned in memory"
    );
    for i in [0, 7, 29] {
        assert_eq!(reader.image(i).as_ptr(), base.wrapping_add(i * 3072));
    }
    assert_eq!(reader.file_len(), (HEADER_LEN + 30 * 3072 + 30) as u64);
}
