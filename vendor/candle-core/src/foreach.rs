//! cifar-stream's multi-tensor in-place op (added by tools/patch_candle_foreach.py; not part of
//! candle).
//!
//! [`inplace`] writes many tensors in place in one storage op, as PyTorch's `_foreach_` ops do:
//! an optimizer's update over a whole parameter group in one pass (CPU) or one launch (CUDA)
//! instead of several ops per tensor. The capture probe records it as one op.

use crate::{Layout, Result, Storage, StorageMutRef, StorageRef, Tensor};

/// Runs `f` once over the storages of `written` (locked for writing, in order) and of `read`
/// (locked for reading, in order), each with its tensor's layout; recorded by the probe as one
/// storage op `name` with by-value `scalars`.
///
/// Fails before locking anything if a tensor of `written` shares its storage with any other
/// operand: that would alias a mutable borrow (and deadlock on the lock).
pub fn inplace<R>(
    name: &str,
    scalars: &[f64],
    written: &[&Tensor],
    read: &[&Tensor],
    f: impl FnOnce(&mut [(&mut Storage, &Layout)], &[(&Storage, &Layout)]) -> Result<R>,
) -> Result<R> {
    for (i, w) in written.iter().enumerate() {
        if written[..i].iter().chain(read).any(|o| o.same_storage(w)) {
            crate::bail!("{name}: written operand {i} shares its storage with another operand")
        }
    }
    crate::probe::op(name, scalars);
    let mut locked_w: Vec<StorageMutRef<'_>> = written.iter().map(|t| t.storage_mut()).collect();
    let locked_r: Vec<StorageRef<'_>> = read.iter().map(|t| t.storage()).collect();
    let mut w: Vec<(&mut Storage, &Layout)> = locked_w
        .iter_mut()
        .zip(written)
        .map(|(s, t)| (&mut **s, t.layout()))
        .collect();
    let r: Vec<(&Storage, &Layout)> = locked_r
        .iter()
        .zip(read)
        .map(|(s, t)| (&**s, t.layout()))
        .collect();
    f(&mut w, &r)
}
