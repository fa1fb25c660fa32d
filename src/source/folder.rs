//! Image-folder datasets: `train/<class>/*.{jpg,jpeg,png}` and `test/<class>/*`, classes sorted
//! by name, read from a directory or from tar entries, and decoded in parallel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use rayon::prelude::*;

use super::archive::Entry;
use super::dataset::{Dataset, SplitData};
use super::error::{Error, Result};
use crate::store::Shape;

/// Where an image's encoded bytes are.
enum Encoded<'a> {
    Memory(&'a [u8]),
    File(PathBuf),
}

/// One image to decode: where it is, and its class index.
struct Item<'a> {
    shown: String,
    class: usize,
    bytes: Encoded<'a>,
}

/// Split name → class name → images (sorted by file name).
type Tree<'a> = BTreeMap<String, BTreeMap<String, Vec<Item<'a>>>>;

/// True for the file extensions an image folder may hold.
pub fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.')
        && [".jpg", ".jpeg", ".png"]
            .iter()
            .any(|ext| lower.ends_with(ext))
}

/// Finds the folder that holds `train/` (the given one, or its only subfolder).
pub fn find_root(dir: &Path) -> Option<PathBuf> {
    if dir.join("train").is_dir() || dir.join("test").is_dir() {
        return Some(dir.to_path_buf());
    }
    let subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    match subdirs.as_slice() {
        [only] if only.join("train").is_dir() || only.join("test").is_dir() => Some(only.clone()),
        _ => None,
    }
}

/// Loads an image-folder dataset from a directory (`root` holds `train/` and `test/`).
pub fn load_dir(root: &Path, progress: &ProgressBar) -> Result<Dataset> {
    let shown = root.display().to_string();
    let mut tree: Tree = BTreeMap::new();
    for split in ["train", "test"] {
        let split_dir = root.join(split);
        if !split_dir.is_dir() {
            continue;
        }
        let classes = tree.entry(split.to_owned()).or_default();
        for class_dir in read_dir_sorted(&split_dir)? {
            if !class_dir.is_dir() {
                continue;
            }
            let class = file_name(&class_dir);
            if class.starts_with('.') {
                continue;
            }
            let items = classes.entry(class).or_default();
            for file in read_dir_sorted(&class_dir)? {
                if file.is_file() && is_image_name(&file_name(&file)) {
                    items.push(Item {
                        shown: file.display().to_string(),
                        class: 0,
                        bytes: Encoded::File(file),
                    });
                }
            }
        }
    }
    decode_tree(shown, root, tree, progress)
}

/// Loads an image-folder dataset from archive entries (`…/train/<class>/<file>`).
pub fn load_entries(archive: &Path, entries: &[Entry], progress: &ProgressBar) -> Result<Dataset> {
    let shown = archive.display().to_string();
    let mut tree: Tree = BTreeMap::new();
    for entry in entries {
        let parts: Vec<&str> = entry.path.split('/').collect();
        // A class folder entry: …/<split>/<class>; an image: …/<split>/<class>/<file>.
        let (split, class, file) = match (entry.is_dir, parts.len()) {
            (true, n) if n >= 2 => (parts[n - 2], parts[n - 1], None),
            (false, n) if n >= 3 => (parts[n - 3], parts[n - 2], Some(parts[n - 1])),
            _ => continue,
        };
        if !(split == "train" || split == "test") || class.starts_with('.') {
            continue;
        }
        let items = tree
            .entry(split.to_owned())
            .or_default()
            .entry(class.to_owned())
            .or_default();
        if file.is_some_and(is_image_name) {
            items.push(Item {
                shown: format!("{shown}:{}", entry.path),
                class: 0,
                bytes: Encoded::Memory(&entry.data),
            });
        }
    }
    for classes in tree.values_mut() {
        for items in classes.values_mut() {
            items.sort_by(|a, b| a.shown.cmp(&b.shown));
        }
    }
    decode_tree(shown, archive, tree, progress)
}

fn decode_tree(
    origin: String,
    root: &Path,
    mut tree: Tree,
    progress: &ProgressBar,
) -> Result<Dataset> {
    for split in ["train", "test"] {
        if !tree.contains_key(split) {
            return Err(Error::MissingSplit {
                path: origin.clone(),
                split,
            });
        }
    }
    let names = |split: &str| tree[split].keys().cloned().collect::<Vec<_>>();
    let (train_classes, test_classes) = (names("train"), names("test"));
    if train_classes != test_classes {
        return Err(Error::ClassMismatch {
            path: origin,
            train: train_classes,
            test: test_classes,
        });
    }
    if train_classes.is_empty() {
        return Err(Error::EmptyClass {
            path: format!("{}", root.join("train").display()),
        });
    }
    if train_classes.len() > 256 {
        return Err(Error::TooManyClasses {
            path: origin,
            found: train_classes.len(),
            max: 256,
        });
    }
    for (split, classes) in &tree {
        for (class, items) in classes {
            if items.is_empty() {
                return Err(Error::EmptyClass {
                    path: format!("{}/{split}/{class}", origin),
                });
            }
        }
    }
    let total: usize = tree.values().flat_map(|c| c.values()).map(Vec::len).sum();
    progress.set_length(total as u64);
    progress.set_position(0);
    progress.set_message("decoding images");
    let mut take = |split: &str| -> Result<SplitData> {
        let start = Instant::now();
        let items: Vec<Item> = tree
            .remove(split)
            .unwrap_or_default()
            .into_values()
            .enumerate()
            .flat_map(|(class, items)| items.into_iter().map(move |it| Item { class, ..it }))
            .collect();
        let (pixels, labels) = decode_items(&items, progress)?;
        Ok(SplitData {
            pixels,
            labels,
            seconds: start.elapsed().as_secs_f64(),
        })
    };
    let train = take("train")?;
    let test = take("test")?;
    Ok(Dataset {
        origin,
        classes: train_classes,
        shape: Shape::CIFAR,
        train,
        test,
    })
}

fn decode_items(items: &[Item], progress: &ProgressBar) -> Result<(Vec<u8>, Vec<u8>)> {
    let shape = Shape::CIFAR;
    let len = shape.image_len();
    let mut pixels = vec![0u8; items.len() * len];
    pixels
        .par_chunks_mut(len)
        .zip(items.par_iter())
        .try_for_each(|(out, item)| {
            decode_one(item, shape, out)?;
            progress.inc(1);
            Ok(())
        })?;
    let labels = items.iter().map(|it| it.class as u8).collect();
    Ok((pixels, labels))
}

/// Decodes one image into `out`, refusing any size or colour type other than `shape`.
fn decode_one(item: &Item, shape: Shape, out: &mut [u8]) -> Result<()> {
    let owned;
    let bytes = match &item.bytes {
        Encoded::Memory(b) => *b,
        Encoded::File(p) => {
            owned = std::fs::read(p).map_err(|e| Error::io(&item.shown, e))?;
            &owned
        }
    };
    let decode_error = |source| Error::Decode {
        path: item.shown.clone(),
        source,
    };
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| decode_error(image::ImageError::IoError(e)))
    };
    // The size from the file's header first: a file claiming a huge image is refused before
    // anything is allocated for its pixels, and decoding is capped at what `shape` needs.
    let (w, h) = reader()?.into_dimensions().map_err(decode_error)?;
    if (w, h) != (shape.width, shape.height) {
        return Err(Error::ImageShape {
            path: item.shown.clone(),
            expected: format!("{}x{} Rgb8", shape.width, shape.height),
            found: format!("{w}x{h}"),
        });
    }
    let mut limited = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(shape.width);
    limits.max_image_height = Some(shape.height);
    limits.max_alloc = Some(64 * shape.image_len() as u64 + (1 << 20));
    limited.limits(limits);
    let img = limited.decode().map_err(decode_error)?;
    let color_ok = shape.channels == 3 && img.color() == image::ColorType::Rgb8;
    if img.width() != shape.width || img.height() != shape.height || !color_ok {
        return Err(Error::ImageShape {
            path: item.shown.clone(),
            expected: format!("{}x{} Rgb8", shape.width, shape.height),
            found: format!("{}x{} {:?}", img.width(), img.height(), img.color()),
        });
    }
    out.copy_from_slice(img.as_bytes());
    Ok(())
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir.display(), e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io(dir.display(), e))?;
    paths.sort();
    Ok(paths)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
