//! The official CIFAR-10 binary version: `data_batch_1..5.bin`, `test_batch.bin` and
//! `batches.meta.txt`, each `.bin` a run of 3,073-byte records (1 label byte, then 1,024 red,
//! 1,024 green and 1,024 blue bytes, each plane row-major).

use rayon::prelude::*;

use super::dataset::{Dataset, SplitData, CIFAR10_CLASSES};
use super::error::{Error, Result};
use crate::store::Shape;

/// Bytes per record.
pub const RECORD_LEN: usize = 1 + PLANE * 3;
const PLANE: usize = 32 * 32;

/// The training batch file names, in the official order.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch file name.
pub const TEST_FILE: &str = "test_batch.bin";
/// The class-name file.
pub const META_FILE: &str = "batches.meta.txt";

/// The raw files of the official layout; each `(display path, bytes)`.
pub struct Files {
    /// `data_batch_1.bin` … `data_batch_5.bin`, in order.
    pub train: Vec<(String, Vec<u8>)>,
    /// `test_batch.bin`.
    pub test: (String, Vec<u8>),
    /// `batches.meta.txt`, when present.
    pub meta: Option<Vec<u8>>,
}

/// Decodes the official files into a dataset, checking every size and label.
pub fn decode(origin: String, files: Files) -> Result<Dataset> {
    let classes = match &files.meta {
        Some(meta) => String::from_utf8_lossy(meta)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => CIFAR10_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    };
    if classes.is_empty() || classes.len() > 256 {
        return Err(Error::TooManyClasses {
            path: format!("{origin}/{META_FILE}"),
            found: classes.len(),
            max: 256,
        });
    }
    let train = decode_split(&files.train, classes.len())?;
    let test = decode_split(std::slice::from_ref(&files.test), classes.len())?;
    Ok(Dataset {
        origin,
        classes,
        shape: Shape::CIFAR,
        train,
        test,
    })
}

fn decode_split(files: &[(String, Vec<u8>)], classes: usize) -> Result<SplitData> {
    let start = std::time::Instant::now();
    let mut count = 0;
    for (path, data) in files {
        if data.len() % RECORD_LEN != 0 {
            return Err(Error::RecordSize {
                path: path.clone(),
                len: data.len() as u64,
                record: RECORD_LEN as u64,
            });
        }
        for (record, chunk) in data.chunks_exact(RECORD_LEN).enumerate() {
            if chunk[0] as usize >= classes {
                return Err(Error::Label {
                    path: path.clone(),
                    record: record as u64,
                    offset: (record * RECORD_LEN) as u64,
                    label: chunk[0],
                    classes,
                });
            }
        }
        count += data.len() / RECORD_LEN;
    }
    let mut pixels = vec![0u8; count * PLANE * 3];
    let mut labels = Vec::with_capacity(count);
    let mut at = 0;
    for (_, data) in files {
        let n = data.len() / RECORD_LEN;
        pixels[at * PLANE * 3..(at + n) * PLANE * 3]
            .par_chunks_mut(PLANE * 3)
            .zip(data.par_chunks_exact(RECORD_LEN))
            .for_each(|(hwc, record)| planar_to_hwc(&record[1..], hwc));
        labels.extend(data.chunks_exact(RECORD_LEN).map(|r| r[0]));
        at += n;
    }
    Ok(SplitData {
        pixels,
        labels,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Interleaves three planes (`R…, G…, B…`) into `RGB RGB …`.
pub fn planar_to_hwc(planar: &[u8], hwc: &mut [u8]) {
    let (r, rest) = planar.split_at(PLANE);
    let (g, b) = rest.split_at(PLANE);
    for (((px, &r), &g), &b) in hwc.chunks_exact_mut(3).zip(r).zip(g).zip(b) {
        px[0] = r;
        px[1] = g;
        px[2] = b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planar_to_hwc_interleaves_channels() {
        let mut planar = vec![0u8; PLANE * 3];
        planar[0] = 1; // R of pixel 0
        planar[PLANE + 1] = 2; // G of pixel 1
        planar[2 * PLANE + PLANE - 1] = 3; // B of the last pixel
        let mut hwc = vec![0u8; PLANE * 3];
        planar_to_hwc(&planar, &mut hwc);
        assert_eq!(hwc[0], 1);
        assert_eq!(hwc[3 + 1], 2);
        assert_eq!(hwc[PLANE * 3 - 1], 3);
        assert_eq!(hwc.iter().filter(|&&v| v != 0).count(), 3);
    }
}
