//! Choosing the candle device: `cpu`, `cuda`, `cuda:N`, or the GPU when there is one.

use candle_core::Device;

/// Parses `--device`; with no choice, the first CUDA GPU when built with `cuda`, else the CPU.
pub fn select(choice: Option<&str>) -> candle_core::Result<Device> {
    match choice {
        None => Ok(if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        Some("cpu") => Ok(Device::Cpu),
        Some("cuda") => Device::new_cuda(0),
        Some(s) => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::new_cuda(n),
            _ => Err(candle_core::Error::Msg(format!(
                "unknown device {s:?}: use cpu, cuda or cuda:N"
            ))),
        },
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
