//! The training step as one CUDA graph (`--cuda-graph`): one eager warm-up step per graph key
//! (batch size and set of frozen parameters) that loads every module, makes every cuDNN plan
//! and workspace and fills candle's cache of small uploads; then the next step's body captured
//! and launched, and every later step's batch staged into the fixed buffers and the graph
//! launched. A capture that fails says why and the run goes on eager: it never trains wrong.
//!
//! The body it captures is the one the capture check holds to "the same every step, state in
//! place" on the CPU (`train::capture`); what only a GPU can show (that the replay equals eager
//! steps, and its speed) is listed in docs/capture.md. Written and compiled without a GPU.

use std::collections::BTreeSet;

use candle_core::Device;

use super::error::{Error, Result};

/// What a captured graph is valid for.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphKey {
    /// Images per batch.
    pub batch: usize,
    /// The parameters frozen in the epoch (their updates are not in the graph).
    pub frozen: BTreeSet<String>,
}

/// Where the run stands with its graph.
enum Stage {
    /// No step of the current key ran yet.
    Cold,
    /// The warm-up step of this key ran; the next one is captured.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Warm(GraphKey),
    /// This key's graph, launched for each step.
    #[cfg(feature = "cuda")]
    Ready(
        GraphKey,
        candle_core::cuda_backend::cudarc::driver::CudaGraph,
    ),
}

/// The run's step graph.
pub struct StepGraphs {
    stage: Stage,
    /// Why graphs were given up, once they were (the run goes on eager).
    failed: Option<String>,
}

impl StepGraphs {
    /// Graphs for a run on `device`: CUDA only.
    pub fn new(device: &Device) -> Result<StepGraphs> {
        if !device.is_cuda() {
            return Err(Error::Unsupported(
                "--cuda-graph needs a CUDA device (a build with the cuda feature and a GPU)".into(),
            ));
        }
        Ok(StepGraphs {
            stage: Stage::Cold,
            failed: None,
        })
    }

    /// Runs one step's `body` for `key` on `device`: eagerly (warm-up of a new key, or after a
    /// capture failed), captured then launched, or launched.
    pub fn run(
        &mut self,
        device: &Device,
        key: GraphKey,
        body: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        if self.failed.is_some() {
            return body();
        }
        match std::mem::replace(&mut self.stage, Stage::Cold) {
            #[cfg(feature = "cuda")]
            Stage::Ready(k, graph) if k == key => {
                graph.launch().map_err(candle_core::Error::wrap)?;
                self.stage = Stage::Ready(k, graph);
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Stage::Warm(k) if k == key => self.capture(device, key, body),
            _ => {
                // A new key (the first step, or an epoch that froze more): an eager step that
                // fills the caches the capture will read.
                with_upload_cache(device, body)?;
                self.stage = Stage::Warm(key);
                Ok(())
            }
        }
    }

    /// Captures `body` as `key`'s graph and launches it; on failure, trains the step eagerly
    /// and stays eager.
    #[cfg(feature = "cuda")]
    fn capture(
        &mut self,
        device: &Device,
        key: GraphKey,
        body: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        match capture_on(device, body) {
            Ok(graph) => {
                graph.launch().map_err(candle_core::Error::wrap)?;
                self.stage = Stage::Ready(key, graph);
                Ok(())
            }
            Err(why) => {
                tracing::warn!("CUDA graph capture failed, training goes on eager: {why}");
                eprintln!("CUDA graph capture failed, training goes on eager: {why}");
                self.failed = Some(why);
                body()
            }
        }
    }
}

/// Runs `body` with candle's cache of small uploads filling (dims, strides, constant indices):
/// the capture serves them from it.
fn with_upload_cache(device: &Device, body: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        let _cache = dev.enable_cuda_graph_htod_cache();
        return body();
    }
    let _ = device;
    body()
}

/// `body` recorded on the device's stream into an instantiated graph, or why not.
#[cfg(feature = "cuda")]
fn capture_on(
    device: &Device,
    body: &mut dyn FnMut() -> Result<()>,
) -> std::result::Result<candle_core::cuda_backend::cudarc::driver::CudaGraph, String> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let Device::Cuda(dev) = device else {
        return Err("not a CUDA device".into());
    };
    if dev.is_event_tracking() {
        // Waits on events recorded before the capture would break it.
        return Err("the device tracks events".into());
    }
    let stream = dev.cuda_stream();
    let cache = dev.enable_cuda_graph_htod_cache();
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| format!("begin capture: {e:?}"))?;
    let recorded = body();
    // Ended whatever the body did: the stream must leave capture mode.
    let flags = sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
    let ended = stream.end_capture(flags);
    drop(cache);
    if let Err(e) = recorded {
        return Err(format!("the step failed while recording: {e}"));
    }
    let graph = ended
        .map_err(|e| format!("end capture: {e:?}"))?
        .ok_or("the capture recorded nothing")?;
    stream
        .context()
        .check_err()
        .map_err(|e| format!("after capture: {e:?}"))?;
    graph.upload().map_err(|e| format!("graph upload: {e:?}"))?;
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphs_are_refused_off_cuda_with_the_reason() {
        let Err(e) = StepGraphs::new(&Device::Cpu) else {
            panic!("graphs on the CPU")
        };
        assert!(e.to_string().contains("needs a CUDA device"), "{e}");
    }
}
