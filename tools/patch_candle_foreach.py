"""Adds cifar-stream's multi-tensor in-place op to candle-core: `foreach::inplace` locks many
tensors' storages (some for writing, some for reading) and hands them to one closure, recorded
by the capture probe as one storage op.

candle's in-place custom ops write one tensor at a time, so an optimizer over a parameter group
costs several ops per parameter (each a kernel launch on CUDA, each a pass over memory and a
fresh output on the CPU). PyTorch's `_foreach_` ops and its multi-tensor apply update a whole
group in one pass or one launch over pointer arrays; this is the storage access that needs.
Run after patch_candle_probe.py (it records through the probe).

Usage: patch_candle_foreach.py CANDLE_CORE_SRC_DIR
"""

import sys

FOREACH = r'''//! cifar-stream's multi-tensor in-place op (added by tools/patch_candle_foreach.py; not part of
//! candle).
//!
//! [`inplace`] writes many tensors in place in one storage op, as PyTorch's `_foreach_` ops do:
//! an optimizer's update over a whole parameter group in one pass (CPU) or one launch (CUDA)
//! instead of several ops per tensor. The capture probe records it as one op.

use crate::{Layout, Result, Storage, StorageMutRef, StorageRef, Tensor};

/// Fails if a tensor of `written` shares its storage with any other operand: that would alias
/// a mutable borrow (and deadlock on the lock). [`inplace`] checks this itself; an op split
/// into several calls checks its whole operand list once with it.
pub fn check(name: &str, written: &[&Tensor], read: &[&Tensor]) -> Result<()> {
    for (i, w) in written.iter().enumerate() {
        if written[..i].iter().chain(read).any(|o| o.same_storage(w)) {
            crate::bail!("{name}: written operand {i} shares its storage with another operand")
        }
    }
    Ok(())
}

/// Runs `f` once over the storages of `written` (locked for writing) and of `read` (locked for
/// reading), each with its tensor's layout, in the order given; recorded by the probe as one
/// storage op `name` with by-value `scalars`.
///
/// Fails before locking anything as [`check`] does. The locks are taken in storage order (as
/// candle's own in-place ops take theirs), so two threads over overlapping tensors cannot
/// deadlock.
pub fn inplace<R>(
    name: &str,
    scalars: &[f64],
    written: &[&Tensor],
    read: &[&Tensor],
    f: impl FnOnce(&mut [(&mut Storage, &Layout)], &[(&Storage, &Layout)]) -> Result<R>,
) -> Result<R> {
    check(name, written, read)?;
    crate::probe::op(name, scalars);
    let mut order: Vec<(usize, bool, usize)> = written
        .iter()
        .enumerate()
        .map(|(i, t)| (t.storage_key(), true, i))
        .chain(read.iter().enumerate().map(|(i, t)| (t.storage_key(), false, i)))
        .collect();
    order.sort_unstable();
    let mut locked_w: Vec<Option<StorageMutRef<'_>>> = written.iter().map(|_| None).collect();
    let mut locked_r: Vec<Option<StorageRef<'_>>> = read.iter().map(|_| None).collect();
    for (_, write, i) in order {
        if write {
            locked_w[i] = Some(written[i].storage_mut());
        } else {
            locked_r[i] = Some(read[i].storage());
        }
    }
    let mut w: Vec<(&mut Storage, &Layout)> = locked_w
        .iter_mut()
        .zip(written)
        .map(|(s, t)| (&mut **s.as_mut().expect("every operand locked"), t.layout()))
        .collect();
    let r: Vec<(&Storage, &Layout)> = locked_r
        .iter()
        .zip(read)
        .map(|(s, t)| (&**s.as_ref().expect("every operand locked"), t.layout()))
        .collect();
    f(&mut w, &r)
}
'''


def main(src):
    open(f'{src}/foreach.rs', 'w').write(FOREACH)
    lib = open(f'{src}/lib.rs').read()
    anchor = 'pub mod probe;'
    if anchor not in lib:
        sys.exit('lib.rs: no `pub mod probe;` (run patch_candle_probe.py first)')
    lib = lib.replace(anchor, anchor + '\npub mod foreach;', 1)
    open(f'{src}/lib.rs', 'w').write(lib)
    print('foreach: multi-tensor in-place op added', file=sys.stderr)


if __name__ == '__main__':
    main(sys.argv[1])
