//! cifar-stream's capture probe (added by tools/patch_candle_probe.py; not part of candle).
//!
//! Between [`start`] and [`stop`], this thread's storage ops (name and by-value scalars), tensors
//! made from host data (dtype, length, a hash of the values) and reads back to the host are
//! recorded in order. [`exempt`] leaves out what runs inside it (a CPU op building its output
//! from host memory is computing, not uploading). Nothing is recorded on other threads.

use std::cell::{Cell, RefCell};

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A storage op: its name and the bits of its by-value scalars.
    Op {
        /// The op (`affine`, `mul`, a custom op's name...).
        name: String,
        /// Its by-value floating-point arguments, as `f64::to_bits`.
        scalars: Vec<u64>,
    },
    /// A tensor made from host data.
    Upload {
        /// Its element type.
        dtype: crate::DType,
        /// Its elements.
        len: usize,
        /// FNV-1a over the values' `f64` bits.
        hash: u64,
    },
    /// A read back to the host (`to_vec*`, `to_scalar`).
    Read {
        /// Elements read.
        len: usize,
    },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Op { name, scalars } => {
                let values: Vec<f64> = scalars.iter().map(|b| f64::from_bits(*b)).collect();
                if values.is_empty() {
                    write!(f, "op {name}")
                } else {
                    write!(f, "op {name} {values:?}")
                }
            }
            Event::Upload { dtype, len, hash } => {
                write!(f, "upload of {len} {dtype:?} values (hash {hash:016x})")
            }
            Event::Read { len } => write!(f, "read of {len} values back to the host"),
        }
    }
}

thread_local! {
    static TRACE: RefCell<Option<Vec<Event>>> = const { RefCell::new(None) };
    static EXEMPT: Cell<usize> = const { Cell::new(0) };
}

/// Starts recording this thread's events (a recording already running starts over).
pub fn start() {
    TRACE.with(|t| *t.borrow_mut() = Some(Vec::new()));
}

/// Stops recording and returns what was recorded (nothing if no recording ran).
pub fn stop() -> Vec<Event> {
    TRACE.with(|t| t.borrow_mut().take().unwrap_or_default())
}

/// Whether this thread is recording.
pub fn recording() -> bool {
    TRACE.with(|t| t.borrow().is_some())
}

/// Runs `f` with recording suspended on this thread.
pub fn exempt<R>(f: impl FnOnce() -> R) -> R {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            EXEMPT.with(|e| e.set(e.get() - 1));
        }
    }
    EXEMPT.with(|e| e.set(e.get() + 1));
    let _restore = Restore;
    f()
}

fn push(make: impl FnOnce() -> Event) {
    if EXEMPT.with(|e| e.get()) > 0 {
        return;
    }
    TRACE.with(|t| {
        if let Some(trace) = t.borrow_mut().as_mut() {
            trace.push(make());
        }
    });
}

/// Records storage op `name` with by-value `scalars`.
pub(crate) fn op(name: &str, scalars: &[f64]) {
    push(|| Event::Op {
        name: name.to_string(),
        scalars: scalars.iter().map(|s| s.to_bits()).collect(),
    });
}

/// Records a storage op whose name is worth computing only while recording.
pub(crate) fn op_named(name: impl FnOnce() -> String) {
    push(|| Event::Op {
        name: name(),
        scalars: Vec::new(),
    });
}

/// Records a tensor made from `data`.
pub(crate) fn upload<D: crate::WithDType>(data: &[D]) {
    push(|| {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for v in data {
            for byte in v.to_f64().to_bits().to_le_bytes() {
                hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
        Event::Upload {
            dtype: D::DTYPE,
            len: data.len(),
            hash,
        }
    });
}

/// Records a tensor made from a host storage.
pub(crate) fn upload_storage(storage: &crate::CpuStorage) {
    use crate::CpuStorage as S;
    match storage {
        S::U8(v) => upload(v),
        S::U32(v) => upload(v),
        S::I16(v) => upload(v),
        S::I32(v) => upload(v),
        S::I64(v) => upload(v),
        S::BF16(v) => upload(v),
        S::F16(v) => upload(v),
        S::F32(v) => upload(v),
        S::F64(v) => upload(v),
        _ => op("upload of an 8-bit float", &[]),
    }
}

/// Records a read of `len` values back to the host.
pub(crate) fn read(len: usize) {
    push(|| Event::Read { len });
}
