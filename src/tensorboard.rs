//! TensorBoard event files: scalars, images and text that `tensorboard --logdir runs` shows run
//! beside run (and W&B imports with `wandb sync`).
//!
//! No maintained crate writes them (tensorboard-rs, the one there is, was last released in 2022
//! on protobuf 2 and says it is not active), so this module frames the records itself over two
//! well-kept crates: `prost` encodes the few protobuf messages (declared here with its derive,
//! field numbers from TensorFlow's `event.proto` and `summary.proto`), `crc32c` checksums them.
//! A record is `u64 length, masked crc32c(length), payload, masked crc32c(payload)`, all
//! little-endian.
//!
//! A run keeps one file (`events.out.tfevents.cifar-stream`). A resumed run first rewrites it
//! without the events past its checkpoint's step (a killed run logged a little further than it
//! saved), so every tag's steps keep increasing with no duplicate.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

/// The run folder's event file.
pub const EVENT_FILE: &str = "events.out.tfevents.cifar-stream";

#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<Value>,
}

#[derive(Clone, PartialEq, Message)]
struct Value {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
    #[prost(oneof = "Kind", tags = "2, 4, 8")]
    kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(Image),
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

#[derive(Clone, PartialEq, Message)]
struct Image {
    #[prost(int32, tag = "1")]
    height: i32,
    #[prost(int32, tag = "2")]
    width: i32,
    #[prost(int32, tag = "3")]
    colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    encoded_image_string: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    /// TensorFlow's `DataType` (7: string).
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    dim: Vec<Dim>,
}

#[derive(Clone, PartialEq, Message)]
struct Dim {
    #[prost(int64, tag = "1")]
    size: i64,
}

/// TensorFlow's masked CRC-32C: a CRC over data holding CRCs is weak, so it is rotated and
/// offset.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One record, framed.
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
    out
}

/// The payloads of the whole records in `bytes`, up to the first torn or damaged one (a
/// killed writer can leave half a record at the end).
fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let end = at + 12 + len;
        if crc != masked_crc(len_bytes) || end + 4 > bytes.len() {
            break;
        }
        let payload = &bytes[at + 12..end];
        let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes"));
        if crc != masked_crc(payload) {
            break;
        }
        out.push(payload);
        at = end + 4;
    }
    out
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A run's event file, open for appending.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (replacing one there), starting with the version record.
    pub fn create(dir: &Path) -> io::Result<EventWriter> {
        let path = dir.join(EVENT_FILE);
        let version = Event {
            wall_time: now(),
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        };
        crate::render::write_atomic(&path, &frame(&version.encode_to_vec()))?;
        EventWriter::append_to(path)
    }

    /// The event file in `dir` kept up to step `step` (a resumed run's checkpoint): later events
    /// and a torn last record are dropped (the file is rewritten atomically), and the writer
    /// appends after what stays. Without a file there, a new one.
    pub fn resume(dir: &Path, step: u64) -> io::Result<EventWriter> {
        let path = dir.join(EVENT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return EventWriter::create(dir),
            Err(e) => return Err(e),
        };
        let mut kept = Vec::with_capacity(bytes.len());
        for payload in records(&bytes) {
            let keep = Event::decode(payload).is_ok_and(|e| e.step <= step as i64);
            if keep {
                kept.extend_from_slice(&frame(payload));
            }
        }
        crate::render::write_atomic(&path, &kept)?;
        EventWriter::append_to(path)
    }

    fn append_to(path: PathBuf) -> io::Result<EventWriter> {
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        Ok(EventWriter {
            out: BufWriter::new(file),
            path,
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn summary(&mut self, step: u64, value: Vec<Value>) -> io::Result<()> {
        let event = Event {
            wall_time: now(),
            step: step as i64,
            what: Some(What::Summary(Summary { value })),
        };
        self.out.write_all(&frame(&event.encode_to_vec()))
    }

    /// Scalars `(tag, value)` at `step`, as one event.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> io::Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| Value {
                tag: (*tag).into(),
                metadata: None,
                kind: Some(Kind::SimpleValue(*v as f32)),
            })
            .collect();
        self.summary(step, value)
    }

    /// An RGB PNG image of `width` × `height` at `step`.
    pub fn image(
        &mut self,
        tag: &str,
        step: u64,
        (width, height): (u32, u32),
        png: Vec<u8>,
    ) -> io::Result<()> {
        let image = Image {
            height: height as i32,
            width: width as i32,
            colorspace: 3,
            encoded_image_string: png,
        };
        let value = Value {
            tag: tag.into(),
            metadata: None,
            kind: Some(Kind::Image(image)),
        };
        self.summary(step, vec![value])
    }

    /// Text (Markdown) at `step`, for TensorBoard's text tab.
    pub fn text(&mut self, tag: &str, step: u64, text: &str) -> io::Result<()> {
        let value = Value {
            tag: tag.into(),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: "text".into(),
                    content: Vec::new(),
                }),
            }),
            kind: Some(Kind::Tensor(TensorProto {
                dtype: 7,
                tensor_shape: Some(TensorShape::default()),
                string_val: vec![text.as_bytes().to_vec()],
            })),
        };
        self.summary(step, vec![value])
    }

    /// Writes what is buffered to the file (before a checkpoint, and at each epoch's end).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(dir: &Path) -> Vec<i64> {
        let bytes = std::fs::read(dir.join(EVENT_FILE)).unwrap();
        records(&bytes)
            .iter()
            .map(|p| Event::decode(*p).unwrap().step)
            .collect()
    }

    #[test]
    fn the_masked_crc_matches_tensorflows_for_a_known_record() {
        // TensorBoard's own masked_crc32c (tensorflow_stub) of the CRC-32C check string.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let mut bytes = frame(b"one");
        bytes.extend(frame(b"two"));
        let whole = bytes.len();
        bytes.extend(&frame(b"three")[..7]);
        assert_eq!(records(&bytes), vec![&b"one"[..], &b"two"[..]]);
        bytes[whole - 1] ^= 1; // a damaged checksum ends the readable part there
        assert_eq!(records(&bytes), vec![&b"one"[..]]);
    }

    #[test]
    fn a_resumed_file_keeps_the_events_up_to_the_checkpoint_and_appends() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(tmp.path()).unwrap();
        for step in [25, 50, 75] {
            w.scalars(step, &[("train/loss", 1.0)]).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        let mut w = EventWriter::resume(tmp.path(), 50).unwrap();
        w.scalars(75, &[("train/loss", 0.5)]).unwrap();
        w.flush().unwrap();
        assert_eq!(steps(tmp.path()), [0, 25, 50, 75]);
    }
}
