//! The collectives a data-parallel step needs, across every rank of a job, and the lone process
//! whose collectives do nothing ([`Local`]).

use candle_core::{DType, Tensor};

/// Gradient floats per host all-reduce: large messages for the bandwidth, several per step for a
/// ResNet-50 so no single copy holds all 25 M floats twice (DDP's 25 MB default, in floats).
pub const BUCKET_FLOATS: usize = 1 << 22;

/// A collective failed, or the launch cannot be joined.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process was launched by an MPI launcher, but this build has no MPI.
    #[error(
        "launched as one of {world} processes (by {launcher}) but built without the mpi \
         feature: rebuild with --features mpi, or run a single process"
    )]
    NoMpi {
        /// Processes in the launch.
        world: usize,
        /// The environment variable that said so.
        launcher: &'static str,
    },
    /// MPI could not be initialised.
    #[error("MPI initialisation failed: {0}")]
    Init(String),
    /// A collective was called from another thread than the one that initialised MPI.
    #[error("MPI collectives run on the thread that initialised MPI (MPI_THREAD_FUNNELED)")]
    WrongThread,
    /// The ranks disagree where they must not.
    #[error("{0}")]
    Diverged(String),
    /// A device collective (NCCL) failed.
    #[error("NCCL: {0}")]
    Nccl(String),
    /// Moving tensors to or from the host buffers of a collective failed.
    #[error("tensor operation failed")]
    Tensor(#[from] candle_core::Error),
}

/// Result alias for collectives.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operations data-parallel training needs, across every rank of a job. Every rank must
/// call the same collectives in the same order with the same lengths.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// Processes in the job.
    fn size(&self) -> usize;
    /// `data` ← the element-wise sum of every rank's `data`.
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<()>;
    /// [`Collective::all_reduce_sum`] in f64.
    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()>;
    /// `data` ← rank `root`'s `data`.
    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<()>;
    /// [`Collective::broadcast`] of bytes.
    fn broadcast_bytes(&self, data: &mut [u8], root: usize) -> Result<()>;
    /// Every rank's `values`, rank after rank (`size × values.len()`).
    fn all_gather(&self, values: &[f64]) -> Result<Vec<f64>>;
    /// Ends every process of the job now, with `code` (the launcher reports it). A rank that
    /// fails must not leave the others waiting in a collective.
    fn abort(&self, code: i32) -> !;
    /// `mpi`, `local`, …
    fn name(&self) -> &'static str;
    /// Whether this is no collective at all (a lone process, nothing averaged): what a captured
    /// CUDA graph can hold as it stands.
    fn is_local(&self) -> bool {
        false
    }

    /// The element-wise mean of every rank's `tensors` (gradients), shaped, typed and placed
    /// like them. By default through host memory in buckets of [`BUCKET_FLOATS`] (alone: the
    /// tensors as they are); a device collective (NCCL) averages on the device.
    fn average(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        average_on_host(self, tensors)
    }

    /// `tensors` become rank `root`'s (one transfer for all of them).
    fn broadcast_tensors(&self, tensors: &[Tensor], root: usize) -> Result<Vec<Tensor>> {
        if self.size() == 1 {
            return Ok(tensors.to_vec());
        }
        let mut host = flatten(tensors)?;
        self.broadcast(&mut host, root)?;
        unflatten(&host, tensors)
    }

    /// True on rank 0, the one that writes files and prints.
    fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// Whether any rank's `flag` is set (every rank gets the same answer).
    fn any(&self, flag: bool) -> Result<bool> {
        let mut v = [flag as u8 as f64];
        self.all_reduce_sum_f64(&mut v)?;
        Ok(v[0] > 0.0)
    }
}

/// A process on its own: rank 0 of 1; every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32], _: usize) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _: &mut [u8], _: usize) -> Result<()> {
        Ok(())
    }
    fn all_gather(&self, values: &[f64]) -> Result<Vec<f64>> {
        Ok(values.to_vec())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn name(&self) -> &'static str {
        "local"
    }
    fn is_local(&self) -> bool {
        true
    }
}

/// [`Collective::average`] through host memory: consecutive tensors joined into buckets of at
/// most [`BUCKET_FLOATS`] (a larger tensor alone), each summed over the ranks and scaled.
pub fn average_on_host<C: Collective + ?Sized>(
    world: &C,
    tensors: &[Tensor],
) -> Result<Vec<Tensor>> {
    if world.size() == 1 {
        return Ok(tensors.to_vec());
    }
    let scale = 1.0 / world.size() as f32;
    let mut out = Vec::with_capacity(tensors.len());
    let mut start = 0;
    while start < tensors.len() {
        let mut end = start;
        let mut floats = 0;
        while end < tensors.len()
            && (floats == 0 || floats + tensors[end].elem_count() <= BUCKET_FLOATS)
        {
            floats += tensors[end].elem_count();
            end += 1;
        }
        let bucket = &tensors[start..end];
        let mut host = flatten(bucket)?;
        world.all_reduce_sum(&mut host)?;
        for v in host.iter_mut() {
            *v *= scale;
        }
        out.extend(unflatten(&host, bucket)?);
        start = end;
    }
    Ok(out)
}

/// The tensors' values, one after another, as host f32: joined on their device first, so a GPU
/// is read back (and waited for) once, not once per tensor.
pub fn flatten(tensors: &[Tensor]) -> Result<Vec<f32>> {
    if tensors.is_empty() {
        return Ok(Vec::new());
    }
    let flat = tensors
        .iter()
        .map(|t| t.flatten_all()?.to_dtype(DType::F32))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&flat, 0)?.to_vec1::<f32>()?)
}

/// [`flatten`]'s inverse: `host` cut into tensors shaped, typed and placed like `like`.
fn unflatten(host: &[f32], like: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut at = 0;
    let mut out = Vec::with_capacity(like.len());
    for t in like {
        let n = t.elem_count();
        let v = Tensor::from_slice(&host[at..at + n], t.shape(), t.device())?;
        out.push(v.to_dtype(t.dtype())?);
        at += n;
    }
    Ok(out)
}
