//! Choosing the candle device (`cpu`, `cuda`, `cuda:N`, or the GPU when there is one), setting
//! up a CUDA device for training (and candle's TF32 switch for its matrix products), and reading
//! its peak memory.

use candle_core::Device;

/// Parses `--device`; with no choice, the first CUDA GPU when built with `cuda`, else the CPU.
/// A CUDA device comes set up for training ([`prepare`]).
pub fn select(choice: Option<&str>) -> candle_core::Result<Device> {
    let device = match choice {
        None => {
            if candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).unwrap_or(Device::Cpu)
            } else {
                Device::Cpu
            }
        }
        Some("cpu") => Device::Cpu,
        Some("cuda") => Device::new_cuda(0)?,
        Some(s) => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::new_cuda(n)?,
            _ => {
                return Err(candle_core::Error::Msg(format!(
                    "unknown device {s:?}: use cpu, cuda or cuda:N"
                )))
            }
        },
    };
    prepare(&device)?;
    Ok(device)
}

/// Sets a CUDA device up for a training process (nothing to do elsewhere):
/// - freed memory stays in the stream-ordered pool for the run (release threshold: unlimited),
///   where cudarc leaves the default, 0, which hands it back to the driver at every
///   synchronisation and makes the next step allocate it again;
/// - no CUDA events are recorded per allocation: every kernel, copy and cuBLAS/cuDNN call runs
///   on the device's one stream, so stream order alone keeps reads after writes. Only tensors
///   created afterwards are affected, hence here, before any exists.
pub fn prepare(device: &Device) -> candle_core::Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        use candle_core::cuda_backend::cudarc::driver::sys;
        // SAFETY: one stream per device in this process (see above).
        unsafe { dev.disable_event_tracking() };
        let pool = default_pool(dev)?;
        let mut unlimited: u64 = u64::MAX;
        // SAFETY: `pool` is the device's default pool; the value is a u64 as the attribute wants.
        let r = unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut unlimited as *mut u64 as *mut std::ffi::c_void,
            )
        };
        check(r, "setting the memory pool's release threshold")?;
    }
    let _ = device;
    Ok(())
}

/// Allows (or forbids) TF32 tensor cores in candle's f32 matrix products (cuBLAS) on CUDA;
/// nothing elsewhere. candle keeps that switch process-wide
/// (`set_gemm_reduced_precision_f32`), so it is set once, by what starts work on `device` with
/// a configuration: the trainer, a saved run, the step and op benchmarks; `check-step`, whose
/// sides differ in TF32 within one process, sets it again for each side. cuDNN's convolutions
/// take the setting with each call instead (`ops::Options`).
pub fn set_tf32(device: &Device, tf32: bool) {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        candle_core::cuda_backend::set_gemm_reduced_precision_f32(tf32);
    }
    let _ = (device, tf32);
}

/// Peak device memory since the process started: `(in use, reserved by the pool)` in bytes, or
/// `None` on the CPU.
pub fn memory_peak(device: &Device) -> candle_core::Result<Option<(u64, u64)>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        use candle_core::cuda_backend::cudarc::driver::sys;
        let pool = default_pool(dev)?;
        let read = |attr| -> candle_core::Result<u64> {
            let mut v: u64 = 0;
            // SAFETY: the high-water attributes are u64 values.
            let r = unsafe {
                sys::cuMemPoolGetAttribute(pool, attr, &mut v as *mut u64 as *mut std::ffi::c_void)
            };
            check(r, "reading the memory pool's peak")?;
            Ok(v)
        };
        let used = read(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
        let reserved = read(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?;
        return Ok(Some((used, reserved)));
    }
    let _ = device;
    Ok(None)
}

#[cfg(feature = "cuda")]
fn default_pool(
    dev: &candle_core::cuda_backend::CudaDevice,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread()
        .map_err(|e| candle_core::Error::Msg(format!("CUDA: {e:?}")))?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: writes the device's default pool handle into `pool`.
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    check(r, "getting the default memory pool")?;
    Ok(pool)
}

#[cfg(feature = "cuda")]
fn check(
    r: candle_core::cuda_backend::cudarc::driver::sys::CUresult,
    what: &str,
) -> candle_core::Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUresult;
    if r == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(candle_core::Error::Msg(format!("CUDA: {what}: {r:?}")))
    }
}

/// A short description for logs.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}
