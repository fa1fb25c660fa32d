//! NCCL for the gradients of CUDA tensors (the `nccl` feature), on top of the MPI world: MPI
//! launches the ranks and carries NCCL's unique id from rank 0 to the others — the way HPC codes
//! bootstrap NCCL — and keeps the host-side collectives (metrics, fingerprints, flags).
//!
//! Not yet run on a GPU: `tools/gpu-check.sh` runs a one-rank NCCL job (one GPU cannot hold two
//! NCCL ranks), which exercises the bootstrap and the device all-reduce but not a second rank.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Device, Storage, Tensor};

use super::collective::{average_on_host, Collective, Error, Result};

/// The MPI world plus an NCCL communicator over the same ranks, one GPU each.
pub struct Nccl {
    host: Arc<dyn Collective>,
    comm: Comm,
}

// SAFETY: like the MPI world it wraps, it is used from the training thread only; the NCCL
// communicator is bound to that thread's device stream.
unsafe impl Send for Nccl {}
// SAFETY: as for `Send`, by convention only: `average` uses `comm` without the thread check
// that the MPI world's methods make.
unsafe impl Sync for Nccl {}

fn nccl_err(e: impl std::fmt::Debug) -> Error {
    Error::Nccl(format!("{e:?}"))
}

impl Nccl {
    /// Joins every rank of `host` into an NCCL communicator on `device` (rank 0 makes the id and
    /// broadcasts it over `host`).
    pub fn new(host: Arc<dyn Collective>, device: &Device) -> Result<Nccl> {
        let Device::Cuda(dev) = device else {
            return Err(Error::Nccl(format!(
                "NCCL needs a CUDA device, not {device:?}"
            )));
        };
        let mut bytes = [0u8; 128];
        if host.is_main() {
            let id = Id::new().map_err(nccl_err)?;
            for (b, c) in bytes.iter_mut().zip(id.internal()) {
                *b = *c as u8;
            }
        }
        host.broadcast_bytes(&mut bytes, 0)?;
        let internal = bytes.map(|b| b as std::ffi::c_char);
        let comm = Comm::from_rank(
            dev.cuda_stream(),
            host.rank(),
            host.size(),
            Id::uninit(internal),
        )
        .map_err(nccl_err)?;
        Ok(Nccl { host, comm })
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn size(&self) -> usize {
        self.host.size()
    }
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<()> {
        self.host.all_reduce_sum(data)
    }
    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()> {
        self.host.all_reduce_sum_f64(data)
    }
    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<()> {
        self.host.broadcast(data, root)
    }
    fn broadcast_bytes(&self, data: &mut [u8], root: usize) -> Result<()> {
        self.host.broadcast_bytes(data, root)
    }
    fn all_gather(&self, values: &[f64]) -> Result<Vec<f64>> {
        self.host.all_gather(values)
    }
    fn abort(&self, code: i32) -> ! {
        self.host.abort(code)
    }
    fn name(&self) -> &'static str {
        "nccl"
    }

    /// On the device, in one buffer, even alone (so a one-GPU job runs the NCCL path); host
    /// tensors take the host path.
    fn average(&self, grads: &[Tensor]) -> Result<Vec<Tensor>> {
        let Some(Device::Cuda(dev)) = grads.first().map(|g| g.device().clone()) else {
            return average_on_host(self, grads);
        };
        let total: usize = grads.iter().map(Tensor::elem_count).sum();
        // One buffer of every gradient, averaged in place by NCCL, then cut back apart.
        // SAFETY: the loop below copies every gradient into it, end to end (elem_count each, over
        // 0..total), before NCCL reads it; copies and all-reduce share the device's one stream.
        let mut buf = unsafe { dev.alloc::<f32>(total) }.map_err(nccl_err)?;
        let mut at = 0;
        for g in grads {
            let g = g
                .to_dtype(DType::F32)
                .and_then(|g| g.contiguous())
                .map_err(nccl_err)?;
            let (storage, layout) = g.storage_and_layout();
            let Storage::Cuda(s) = &*storage else {
                return Err(Error::Nccl("a gradient is not on the GPU".into()));
            };
            let src = s.as_cuda_slice::<f32>().map_err(nccl_err)?;
            let (a, b) = layout
                .contiguous_offsets()
                .ok_or_else(|| Error::Nccl("a gradient is not contiguous".into()))?;
            dev.memcpy_dtod(&src.slice(a..b), &mut buf.slice_mut(at..at + (b - a)))
                .map_err(nccl_err)?;
            at += b - a;
        }
        self.comm
            .all_reduce_in_place(&mut buf, &ReduceOp::Avg)
            .map_err(nccl_err)?;
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(buf, dev.clone()));
        let all = Tensor::from_storage(storage, total, BackpropOp::none(), false);
        let mut out = Vec::with_capacity(grads.len());
        let mut at = 0;
        for g in grads {
            let n = g.elem_count();
            let part = all
                .narrow(0, at, n)
                .and_then(|p| p.reshape(g.shape()))
                .and_then(|p| p.to_dtype(g.dtype()))
                .map_err(nccl_err)?;
            out.push(part);
            at += n;
        }
        Ok(out)
    }
}
