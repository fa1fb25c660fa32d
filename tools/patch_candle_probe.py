"""Adds cifar-stream's capture probe to candle-core: a thread-local trace of every storage op
(with its by-value scalars), every tensor made from host data (with a hash of its bytes) and
every read back to the host, recorded only between `probe::start()` and `probe::stop()`.

A CUDA graph replays what it captured: a by-value scalar that changes per step, a fresh upload
of per-step data, a host branch or a read inside the step are all wrong under capture, and all
show as a difference between two steps' traces. The trainer's capture check compares them on
the CPU, where no GPU is needed (src/train/capture.rs). Outside a recording each hook is one
thread-local flag test.

Usage: patch_candle_probe.py CANDLE_CORE_SRC_DIR
"""

import re
import sys

PROBE = r'''//! cifar-stream's capture probe (added by tools/patch_candle_probe.py; not part of candle).
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
'''

# Storage ops and the hook each gets; the rest get `op("<fn name>")`.
HOOKS = {
    'const_set': 'crate::probe::op_named(|| format!("const_set {v:?}"));',
    'affine': 'crate::probe::op("affine", &[mul, add]);',
    'powf': 'crate::probe::op("powf", &[alpha]);',
    'elu': 'crate::probe::op("elu", &[alpha]);',
    'cmp': 'crate::probe::op_named(|| format!("cmp {}", op as u8));',
    'reduce_op': 'crate::probe::op_named(|| format!("reduce {op:?} over {s:?}"));',
    'to_dtype': 'crate::probe::op_named(|| format!("to_dtype {dtype:?}"));',
    'apply_op1': 'crate::probe::op_named(|| c.name().to_string());',
    'apply_op2': 'crate::probe::op_named(|| c.name().to_string());',
    'apply_op3': 'crate::probe::op_named(|| c.name().to_string());',
    'inplace_op': 'crate::probe::op_named(|| c.name().to_string());',
    'unary_impl': 'crate::probe::op(B::NAME, &[]);',
    'binary_impl': 'crate::probe::op(B::NAME, &[]);',
    'upsample_bilinear2d': 'crate::probe::op("upsample_bilinear2d", &[scale_h.unwrap_or(f64::NAN), scale_w.unwrap_or(f64::NAN)]);',
}
SKIP = {'same_device', 'same_dtype'}
SIGNATURE = re.compile(r'^    pub\(crate\) (?:unsafe )?fn (\w+)')


def hook_functions(text, hooks, skip, default):
    lines = text.split('\n')
    out, n, i = [], 0, 0
    while i < len(lines):
        out.append(lines[i])
        m = SIGNATURE.match(lines[i])
        if m and m.group(1) not in skip:
            name = m.group(1)
            j = i
            while not lines[j].rstrip().endswith('{'):
                j += 1
                out.append(lines[j])
            out.append('        ' + hooks.get(name, default.format(name=name)))
            n += 1
            i = j
        i += 1
    return '\n'.join(out), n


def insert_after(text, anchor, line, what):
    if anchor not in text:
        sys.exit(f'{what}: anchor not found (upstream changed?): {anchor!r}')
    return text.replace(anchor, anchor + '\n' + line, 1)


def main(src):
    open(f'{src}/probe.rs', 'w').write(PROBE)
    lib = open(f'{src}/lib.rs').read()
    lib = insert_after(lib, 'pub mod op;', 'pub mod probe;', 'lib.rs')
    open(f'{src}/lib.rs', 'w').write(lib)

    storage = open(f'{src}/storage.rs').read()
    storage, n = hook_functions(storage, HOOKS, SKIP, 'crate::probe::op("{name}", &[]);')
    if n < 30:
        sys.exit(f'storage.rs: only {n} ops hooked (expected about 33): upstream changed?')
    open(f'{src}/storage.rs', 'w').write(storage)

    device = open(f'{src}/device.rs').read()
    for sig, hook in [
        ('pub(crate) fn storage_from_slice<D: WithDType>(&self, data: &[D]) -> Result<Storage> {',
         '        crate::probe::upload(data);'),
        ('pub(crate) fn storage_owned<S: WithDType>(&self, data: Vec<S>) -> Result<Storage> {',
         '        crate::probe::upload(&data);'),
        ('pub(crate) fn storage<A: NdArray>(&self, array: A) -> Result<Storage> {',
         '        if crate::probe::recording() {\n'
         '            crate::probe::upload_storage(&array.to_cpu_storage());\n'
         '        }'),
        ('pub(crate) fn zeros(&self, shape: &Shape, dtype: DType) -> Result<Storage> {',
         '        crate::probe::op_named(|| format!("zeros {dtype:?}"));'),
    ]:
        device = insert_after(device, sig, hook, 'device.rs')
    open(f'{src}/device.rs', 'w').write(device)

    tensor = open(f'{src}/tensor.rs').read()
    for sig in ['pub fn to_scalar<S: crate::WithDType>(&self) -> Result<S> {',
                'pub fn to_vec1<S: crate::WithDType>(&self) -> Result<Vec<S>> {',
                'pub fn to_vec2<S: crate::WithDType>(&self) -> Result<Vec<Vec<S>>> {',
                'pub fn to_vec3<S: crate::WithDType>(&self) -> Result<Vec<Vec<Vec<S>>>> {']:
        tensor = insert_after(tensor, sig, '        crate::probe::read(self.elem_count());', 'tensor.rs')
    open(f'{src}/tensor.rs', 'w').write(tensor)
    print(f'probe: {n} storage ops, 4 upload and 4 read hooks', file=sys.stderr)


if __name__ == '__main__':
    main(sys.argv[1])
