//! GPU busy: CUDA timing events around each graph replay.

use crate::train::error::Result;

/// CUDA events around each replay: inside a graph the GPU runs the step's kernels back to back,
/// so the time between a replay's two events is GPU work, not host gaps.
#[derive(Default)]
pub(super) struct Busy {
    #[cfg(feature = "cuda")]
    replays: Vec<(
        candle_core::cuda_backend::cudarc::driver::CudaEvent,
        candle_core::cuda_backend::cudarc::driver::CudaEvent,
    )>,
    /// The GPU seconds of the replays already read since the last [`Busy::take`].
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    seconds: Option<f64>,
}

impl Busy {
    /// Launches `graph` between two timing events on the device's stream.
    #[cfg(feature = "cuda")]
    pub(super) fn launch(
        &mut self,
        device: &candle_core::Device,
        graph: &candle_core::cuda_backend::cudarc::driver::CudaGraph,
    ) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
        let candle_core::Device::Cuda(dev) = device else {
            let off = "a graph off CUDA".to_string();
            return Err(crate::train::error::Error::Unsupported(off));
        };
        let stream = dev.cuda_stream();
        let timed = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = stream
            .record_event(timed)
            .map_err(candle_core::Error::wrap)?;
        graph.launch().map_err(candle_core::Error::wrap)?;
        let end = stream
            .record_event(timed)
            .map_err(candle_core::Error::wrap)?;
        self.replays.push((start, end));
        Ok(())
    }

    /// The replays' GPU seconds since the last [`Busy::take`] (waiting for those still
    /// running), or `None` without any.
    #[cfg(feature = "cuda")]
    pub(super) fn so_far(&mut self) -> Result<Option<f64>> {
        for (start, end) in self.replays.drain(..) {
            let ms = start.elapsed_ms(&end).map_err(candle_core::Error::wrap)? as f64;
            self.seconds = Some(self.seconds.unwrap_or(0.0) + ms / 1e3);
        }
        Ok(self.seconds)
    }

    #[cfg(not(feature = "cuda"))]
    pub(super) fn so_far(&mut self) -> Result<Option<f64>> {
        Ok(None)
    }

    /// [`Busy::so_far`], starting over.
    pub(super) fn take(&mut self) -> Result<Option<f64>> {
        let seconds = self.so_far()?;
        self.seconds = None;
        Ok(seconds)
    }
}
