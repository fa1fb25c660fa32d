//! Bad input: a clear error naming the culprit, and nothing half-written. One test per case.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;
use cifar_stream::prep::{self, Error as PrepError};
use cifar_stream::source::{self, synthetic, Error as SourceError};
use cifar_stream::store::{self, Error as StoreError, Reader, Shape, Split, Writer, HEADER_LEN};
use indicatif::ProgressBar;

/// Runs a full prep of `src` into a fresh output folder and returns the error and that folder.
fn prep_err(src: &Path) -> (PrepError, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let bar = ProgressBar::hidden();
    let result = source::load(src, &bar)
        .map_err(PrepError::from)
        .and_then(|(_, d)| prep::write_store(&d, out.path(), false, &bar).map(|_| ()));
    let err = result.expect_err("prep should fail");
    assert_eq!(
        list(out.path()),
        Vec::<String>::new(),
        "nothing may be written on failure"
    );
    (err, out)
}

fn source_err(src: &Path) -> SourceError {
    match prep_err(src).0 {
        PrepError::Source(e) => e,
        other => panic!("expected a source error, got {other:?}"),
    }
}

fn official_archive(dir: &Path, files: &[(String, Vec<u8>)]) -> PathBuf {
    let bin = write_official_dir(dir, files);
    let archive = dir.join("cifar-10-binary.tar.gz");
    tar_dir(&bin, &archive, true);
    archive
}

#[test]
fn truncated_tar_gz_is_an_archive_error() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = official_archive(tmp.path(), &official_files(20));
    let bytes = fs::read(&archive).unwrap();
    fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
    let err = source_err(&archive);
    assert!(matches!(err, SourceError::Archive { .. }), "{err:?}");
    assert!(err.to_string().contains("cifar-10-binary.tar.gz"), "{err}");
}

#[test]
fn corrupt_gzip_stream_is_an_archive_error() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = official_archive(tmp.path(), &official_files(20));
    let mut bytes = fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    fs::write(&archive, &bytes).unwrap();
    let err = source_err(&archive);
    assert!(matches!(err, SourceError::Archive { .. }), "{err:?}");
}

#[test]
fn bin_size_not_a_multiple_of_3073_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = official_files(3);
    files[2].1.pop();
    let bin = write_official_dir(tmp.path(), &files);
    let err = source_err(&bin);
    match &err {
        SourceError::RecordSize { path, len, record } => {
            assert!(path.ends_with("data_batch_3.bin"), "{path}");
            assert_eq!((*len, *record), (3 * 3073 - 1, 3073));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn label_of_10_names_file_record_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = official_files(4);
    files[5].1[2 * RECORD] = 10;
    let archive = official_archive(tmp.path(), &files);
    match source_err(&archive) {
        SourceError::Label {
            path,
            record,
            offset,
            label,
            classes,
        } => {
            assert!(path.ends_with("test_batch.bin"), "{path}");
            assert_eq!((record, offset, label, classes), (2, 2 * 3073, 10, 10));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_batch_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = write_official_dir(tmp.path(), &official_files(2));
    fs::remove_file(bin.join("data_batch_4.bin")).unwrap();
    match source_err(&bin) {
        SourceError::MissingFile { name, .. } => assert_eq!(name, "data_batch_4.bin"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn image_that_is_not_32x32_names_the_file_and_is_not_resized() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ds");
    write_png_folder(&root, &["a", "b"], 2, 1);
    let bad = root.join("train/b/0001.png");
    image::RgbImage::from_raw(31, 32, fixture_pixels(31, 32, 0, 0))
        .unwrap()
        .save(&bad)
        .unwrap();
    match source_err(&root) {
        SourceError::ImageShape { path, found, .. } => {
            assert!(path.ends_with("train/b/0001.png"), "{path}");
            assert!(found.starts_with("31x32"), "{found}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn image_that_is_not_rgb_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ds");
    write_png_folder(&root, &["a", "b"], 2, 1);
    let bad = root.join("test/a/0000.png");
    image::GrayImage::from_raw(32, 32, vec![7; 1024])
        .unwrap()
        .save(&bad)
        .unwrap();
    match source_err(&root) {
        SourceError::ImageShape { path, found, .. } => {
            assert!(path.ends_with("test/a/0000.png"), "{path}");
            assert!(found.contains("L8"), "{found}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn undecodable_image_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ds");
    write_png_folder(&root, &["a"], 2, 1);
    fs::write(root.join("train/a/0001.png"), b"not a png at all").unwrap();
    match source_err(&root) {
        SourceError::Decode { path, .. } => assert!(path.ends_with("train/a/0001.png"), "{path}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_class_folder_is_named_in_a_folder_and_in_a_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ds");
    write_png_folder(&root, &["a", "b"], 2, 1);
    for f in list(&root.join("test/b")) {
        fs::remove_file(root.join("test/b").join(f)).unwrap();
    }
    match source_err(&root) {
        SourceError::EmptyClass { path } => assert!(path.ends_with("test/b"), "{path}"),
        other => panic!("{other:?}"),
    }
    let tar = tmp.path().join("ds.tar");
    tar_dir(&root, &tar, false);
    match source_err(&tar) {
        SourceError::EmptyClass { path } => assert!(path.ends_with("test/b"), "{path}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn train_without_test_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ds");
    write_png_folder(&root, &["a", "b"], 2, 1);
    fs::remove_dir_all(root.join("test")).unwrap();
    match source_err(&root) {
        SourceError::MissingSplit { split, .. } => assert_eq!(split, "test"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn test_classes_must_match_train_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ds");
    write_png_folder(&root, &["a", "b"], 2, 1);
    fs::rename(root.join("test/b"), root.join("test/c")).unwrap();
    assert!(matches!(
        source_err(&root),
        SourceError::ClassMismatch { .. }
    ));
}

#[test]
fn unreadable_source_is_an_io_error_naming_it() {
    let err = source_err(Path::new("/nonexistent/cifar-10-binary.tar.gz"));
    assert!(matches!(err, SourceError::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("/nonexistent/cifar-10-binary.tar.gz"),
        "{err}"
    );
}

#[test]
fn unrecognised_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("readme.txt"), "hi").unwrap();
    assert!(matches!(
        source_err(tmp.path()),
        SourceError::Unrecognised { .. }
    ));
}

#[test]
fn unwritable_output_fails_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("a-file");
    fs::write(&blocker, "x").unwrap();
    let bar = ProgressBar::hidden();
    let data = synthetic::generate(2, 0, &bar);
    let err = prep::write_store(&data, &blocker.join("store"), false, &bar).unwrap_err();
    assert!(err.to_string().contains("a-file"), "{err}");
    assert_eq!(list(tmp.path()), vec!["a-file"]);
}

#[test]
fn existing_store_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let bar = ProgressBar::hidden();
    let first = synthetic::generate(2, 0, &bar);
    prep::write_store(&first, tmp.path(), false, &bar).unwrap();
    let second = synthetic::generate(3, 1, &bar);
    let err = prep::write_store(&second, tmp.path(), false, &bar).unwrap_err();
    assert!(
        matches!(err, PrepError::Store(StoreError::Exists { .. })),
        "{err:?}"
    );
    assert_eq!(
        Reader::open(Split::Train.path_in(tmp.path()))
            .unwrap()
            .len(),
        20
    );
    prep::write_store(&second, tmp.path(), true, &bar).unwrap();
    assert_eq!(
        Reader::open(Split::Train.path_in(tmp.path()))
            .unwrap()
            .len(),
        30
    );
    assert_eq!(
        list(tmp.path()),
        vec!["test.store", "train.store"],
        "no temporary file left"
    );
}

#[test]
fn abandoned_writer_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("train.store");
    let mut w = Writer::create(&dest, Shape::CIFAR, vec!["a".into()], false).unwrap();
    w.push(&[1; 3072], 0).unwrap();
    drop(w); // as on an error or an unwinding interrupt
    assert_eq!(list(tmp.path()), Vec::<String>::new());
}

#[test]
fn writer_refuses_a_label_beyond_the_classes_and_a_short_image() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("train.store");
    let mut w = Writer::create(&dest, Shape::CIFAR, vec!["a".into(), "b".into()], false).unwrap();
    assert!(matches!(
        w.push(&[0; 3072], 2),
        Err(StoreError::LabelOutOfRange { label: 2, .. })
    ));
    assert!(matches!(
        w.push(&[0; 3071], 0),
        Err(StoreError::ImageSize { .. })
    ));
}

/// A small valid store file to damage.
fn store_file() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let bar = ProgressBar::hidden();
    prep::write_store(&synthetic::generate(2, 0, &bar), tmp.path(), false, &bar).unwrap();
    let path = Split::Train.path_in(tmp.path());
    (tmp, path)
}

fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> store::Error {
    let mut bytes = fs::read(path).unwrap();
    f(&mut bytes);
    fs::write(path, bytes).unwrap();
    match Reader::open(path).and_then(|r| r.verify()) {
        Ok(()) => panic!("damaged store must be refused"),
        Err(e) => e,
    }
}

/// Rewrites the header checksum so that a deliberately edited header passes that check.
fn reseal(bytes: &mut [u8]) {
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..HEADER_LEN - 8]);
    bytes[HEADER_LEN - 8..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn store_with_wrong_magic_is_refused() {
    let (_tmp, path) = store_file();
    let err = damage(&path, |b| b[0] = b'X');
    assert!(matches!(err, StoreError::BadMagic { .. }), "{err:?}");
    assert!(err.to_string().contains("train.store"), "{err}");
}

#[test]
fn store_with_wrong_version_is_refused() {
    let (_tmp, path) = store_file();
    let err = damage(&path, |b| {
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        reseal(b);
    });
    assert!(
        matches!(
            err,
            StoreError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn store_with_wrong_size_is_refused() {
    let (_tmp, path) = store_file();
    let err = damage(&path, |b| {
        b.truncate(b.len() - 1);
    });
    match err {
        StoreError::SizeMismatch {
            what,
            expected,
            found,
            ..
        } => {
            assert_eq!(what, "file length");
            assert_eq!(expected, found + 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn store_with_a_flipped_pixel_fails_its_checksum() {
    let (_tmp, path) = store_file();
    let err = damage(&path, |b| b[HEADER_LEN + 100] ^= 1);
    assert!(
        matches!(err, StoreError::ChecksumMismatch { .. }),
        "{err:?}"
    );
}

#[test]
fn store_with_an_edited_header_fails_the_header_checksum() {
    let (_tmp, path) = store_file();
    let err = damage(&path, |b| b[16] ^= 1);
    assert!(matches!(err, StoreError::CorruptHeader { .. }), "{err:?}");
}

#[test]
fn store_with_a_label_beyond_its_classes_is_refused_on_open() {
    let (_tmp, path) = store_file();
    let err = damage(&path, |b| *b.last_mut().unwrap() = 200);
    assert!(
        matches!(err, StoreError::LabelOutOfRange { label: 200, .. }),
        "{err:?}"
    );
}
