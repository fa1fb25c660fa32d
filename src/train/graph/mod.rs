//! The training step as one CUDA graph (on by default on CUDA for a lone process; `--cuda-graph`
//! insists, `--no-cuda-graph` turns it off): one eager warm-up step per graph key (batch size
//! and set of frozen parameters) that loads every module, makes every cuDNN plan and workspace
//! and fills candle's cache of small uploads; then the next step's body captured, launched, and
//! held to an eager step from the same state (the first replay must agree, or the graph is
//! dropped); every later step's batch is staged into the fixed buffers and the graph launched.
//! A capture that fails or disagrees says why and the run goes on eager: it never trains wrong.
//!
//! The body it captures is the one the capture check holds to "the same every step, state in
//! place" on the CPU (`train::capture`); what only a GPU can show (that the replay equals eager
//! steps, and its speed) is listed in docs/capture.md. Written and compiled without a GPU.

use std::collections::BTreeSet;

mod busy;

use busy::Busy;

use super::config::GraphMode;
use super::error::{Error, Result};
use crate::dist::Collective;
use candle_core::{DType, Device, Tensor};

/// How far a first replay may be from the eager step, relative to each tensor's largest value:
/// eager steps on a GPU differ among themselves by rounding (cuDNN's atomics), a wrong graph by
/// far more.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub const REPLAY_TOLERANCE: f64 = 1e-3;

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
    /// This key's graph, launched for each step; `false` until a replay on a step after the
    /// captured one (new rates, mask and batch) agreed with an eager step.
    #[cfg(feature = "cuda")]
    Ready(
        GraphKey,
        candle_core::cuda_backend::cudarc::driver::CudaGraph,
        bool,
    ),
}

/// The run's step graph.
pub struct StepGraphs {
    stage: Stage,
    /// Why graphs were given up, once they were (the run goes on eager).
    failed: Option<String>,
    /// The replays' GPU time.
    busy: Busy,
    /// The negative control: replays keep the captured step's rates.
    freeze_rates: bool,
    /// Under it, the scalar buffer and its values at capture, put back before each replay.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    frozen: Option<(Tensor, Tensor)>,
}

impl StepGraphs {
    /// The graphs of a run on `device` whose gradients average over `world`, under `mode`: none
    /// off CUDA or with a collective (several ranks, or NCCL even alone: a capture has not been
    /// shown to hold one), which [`GraphMode::On`] refuses with the reason.
    pub fn for_run(
        mode: GraphMode,
        device: &Device,
        world: &dyn Collective,
    ) -> Result<Option<StepGraphs>> {
        let why_not = if !device.is_cuda() {
            Some("CUDA graphs need a CUDA device (a build with the cuda feature and a GPU)")
        } else if !world.is_local() {
            Some("CUDA graphs train one process without a collective (these steps stay eager)")
        } else {
            None
        };
        match (mode, why_not) {
            (GraphMode::Off, _) => Ok(None),
            (GraphMode::On, Some(why)) => Err(Error::Unsupported(format!("--cuda-graph: {why}"))),
            (GraphMode::Auto, Some(why)) => {
                if device.is_cuda() {
                    eprintln!("{why}");
                }
                Ok(None)
            }
            (_, None) => Ok(Some(StepGraphs {
                stage: Stage::Cold,
                failed: None,
                busy: Busy::default(),
                freeze_rates: false,
                frozen: None,
            })),
        }
    }

    /// With `on`, the negative control of the GPU check: every replay reads the rates and EMA
    /// decay of the captured step, as a graph that froze them would (wrong on purpose).
    pub fn freezing_rates(mut self, on: bool) -> StepGraphs {
        self.freeze_rates = on;
        self
    }

    /// Whether the next step of `key` holds a replay to an eager step (the captured step and the
    /// one after it), so [`StepGraphs::run`] needs the state they are compared on.
    pub fn checks_next(&self, key: &GraphKey) -> bool {
        if self.failed.is_some() {
            return false;
        }
        match &self.stage {
            Stage::Warm(k) => k == key,
            #[cfg(feature = "cuda")]
            Stage::Ready(k, _, verified) => k == key && !verified,
            Stage::Cold => false,
        }
    }

    /// Runs one step's `body` for `key` on `device`: eagerly (warm-up of a new key, or after a
    /// capture failed), captured then launched, or launched. `state` (every tensor the step
    /// writes, by name) is read only when a replay is held to eager ([`StepGraphs::checks_next`]).
    pub fn run(
        &mut self,
        device: &Device,
        key: GraphKey,
        state: &[(String, Tensor)],
        body: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        if self.failed.is_some() {
            return body();
        }
        match std::mem::replace(&mut self.stage, Stage::Cold) {
            #[cfg(feature = "cuda")]
            Stage::Ready(k, graph, verified) if k == key => {
                if let Some((buffer, at_capture)) = &self.frozen {
                    buffer.slice_set(at_capture, 0, 0)?;
                }
                if verified {
                    self.busy.launch(device, &graph)?;
                    self.stage = Stage::Ready(k, graph, true);
                    return Ok(());
                }
                // The first replay with this step's own rates, mask and batch: a value the
                // capture froze (a launch argument) differs only here.
                self.hold_to_eager(k, graph, true, state, body, "step after capture")
            }
            #[cfg(feature = "cuda")]
            Stage::Warm(k) if k == key => self.capture(device, key, state, body),
            _ => {
                // A new key (the first step, or an epoch that froze more): an eager step that
                // fills the caches the capture will read.
                let _ = state;
                with_upload_cache(device, body)?;
                self.stage = Stage::Warm(key);
                Ok(())
            }
        }
    }

    /// What the graphs did: `"replayed"` once a graph is launched per step, `"eager: <why>"`
    /// once given up, `"not yet captured"` before.
    pub fn status(&self) -> String {
        match (&self.failed, &self.stage) {
            (Some(why), _) => format!("eager: {why}"),
            #[cfg(feature = "cuda")]
            (None, Stage::Ready(.., true)) => "replayed".into(),
            #[cfg(feature = "cuda")]
            (None, Stage::Ready(.., false)) => "captured, the first replay not yet checked".into(),
            _ => "not yet captured".into(),
        }
    }

    /// The GPU seconds of the replays launched since the last call (waits for them), or `None`
    /// when none was launched: the numerator of the epoch's "GPU busy".
    pub fn take_busy_seconds(&mut self) -> Result<Option<f64>> {
        self.busy.take()
    }

    /// The GPU seconds of the epoch's replays so far (waits for them), without starting over:
    /// the numerator of the GPU busy logged between epochs.
    pub fn busy_seconds_so_far(&mut self) -> Result<Option<f64>> {
        self.busy.so_far()
    }

    /// Captures `body` as `key`'s graph, launches it and holds the result to an eager step from
    /// the same state ([`replay_agrees`]); on a failed capture or a disagreement the step's
    /// eager result stands and the run stays eager.
    #[cfg(feature = "cuda")]
    fn capture(
        &mut self,
        device: &Device,
        key: GraphKey,
        state: &[(String, Tensor)],
        body: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let graph = match capture_on(device, body) {
            Ok(graph) => graph,
            Err(why) => return self.give_up(format!("capture failed: {why}"), body),
        };
        if self.freeze_rates {
            if let Some((_, buffer)) = state.iter().find(|(name, _)| name == "scalars") {
                self.frozen = Some((buffer.clone(), buffer.copy()?));
            }
        }
        self.hold_to_eager(key, graph, false, state, body, "captured step")
    }

    /// Holds `graph`'s replay of this step to the eager step ([`replay_agrees`]): agreeing, it
    /// becomes `key`'s graph (`checked`: for good, with no check to come); not, the run goes on
    /// eager, saying `what` step disagreed, and the eager step's result stands.
    #[cfg(feature = "cuda")]
    fn hold_to_eager(
        &mut self,
        key: GraphKey,
        graph: candle_core::cuda_backend::cudarc::driver::CudaGraph,
        checked: bool,
        state: &[(String, Tensor)],
        body: &mut dyn FnMut() -> Result<()>,
        what: &str,
    ) -> Result<()> {
        let mut replay = || launch(&graph);
        match replay_agrees(state, &mut replay, body)? {
            None => {
                self.stage = Stage::Ready(key, graph, checked);
                Ok(())
            }
            Some(why) => self.give_up(format!("{what}: {why}"), &mut || Ok(())),
        }
    }

    /// Stays eager from now on, saying why, and trains this step with `body`.
    #[cfg(feature = "cuda")]
    fn give_up(&mut self, why: String, body: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        tracing::warn!("CUDA graph given up, training goes on eager: {why}");
        eprintln!("CUDA graph given up, training goes on eager: {why}");
        self.failed = Some(why);
        body()
    }
}

/// Runs `replay` from the current `state`, then `eager` from the same state, and says where
/// the two results part: a replay that failed or left a NaN or an infinity, or a tensor further
/// from eager than [`REPLAY_TOLERANCE`] of its largest value (integer tensors, the epoch's hit
/// count: by more than one). `state` is left as `eager` left it. A graph's replays are held to
/// this on the captured step and the one after it: a graph that reads memory that moved, or froze
/// a value it should read each step, shows here before it trains anything.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn replay_agrees(
    state: &[(String, Tensor)],
    replay: &mut dyn FnMut() -> Result<()>,
    eager: &mut dyn FnMut() -> Result<()>,
) -> Result<Option<String>> {
    let copies =
        || -> candle_core::Result<Vec<Tensor>> { state.iter().map(|(_, t)| t.copy()).collect() };
    let before = copies()?;
    let replayed = replay()
        .map_err(|e| e.to_string())
        .and_then(|()| copies().map_err(|e| e.to_string()));
    for ((_, t), b) in state.iter().zip(&before) {
        t.flatten_all()?.slice_set(&b.flatten_all()?, 0, 0)?;
    }
    eager()?;
    let replayed = match replayed {
        Ok(r) => r,
        Err(e) => return Ok(Some(format!("the replay failed: {e}"))),
    };
    // A max skips NaN on CUDA (fmaxf): the finite check first, by a sum.
    let named = state
        .iter()
        .zip(&replayed)
        .map(|((n, _), r)| (n.as_str(), r));
    if let Some(name) = super::finite::first_non_finite(named)? {
        return Ok(Some(format!(
            "the replay left a NaN or an infinity in {name}"
        )));
    }
    // Each tensor's largest difference over what it may be, in one read.
    let mut ratios = Vec::with_capacity(state.len());
    for ((_, t), r) in state.iter().zip(&replayed) {
        let (e, r) = (t.to_dtype(DType::F64)?, r.to_dtype(DType::F64)?);
        let diff = (&r - &e)?.abs()?.flatten_all()?.max(0)?;
        let allowed = match t.dtype().is_float() {
            true => ((e.abs()?.flatten_all()?.max(0)? * REPLAY_TOLERANCE)? + 1e-30)?,
            false => Tensor::new(1.0f64, t.device())?,
        };
        ratios.push((diff / allowed)?);
    }
    if ratios.is_empty() {
        return Ok(None);
    }
    let ratios: Vec<f64> = Tensor::stack(&ratios, 0)?.to_vec1()?;
    let worst = (state.iter().zip(&ratios))
        .find(|(_, &q)| q.is_nan() || q > 1.0)
        .map(|((name, _), q)| {
            format!("the replay differs from an eager step in {name} ({q:.2e} times the tolerance)")
        });
    Ok(worst)
}

/// Launches `graph` (the first replays, held to eager; later ones go through [`Busy`]).
#[cfg(feature = "cuda")]
fn launch(graph: &candle_core::cuda_backend::cudarc::driver::CudaGraph) -> Result<()> {
    graph.launch().map_err(candle_core::Error::wrap)?;
    Ok(())
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
    // Taken on every path: a free that failed inside an invalidated capture leaves its error in
    // the context, where the eager fallback's first call would find it.
    let pending = stream.context().check_err();
    if let Err(e) = recorded {
        return Err(format!(
            "the step failed while recording: {e} ({pending:?})"
        ));
    }
    let graph = ended
        .map_err(|e| format!("end capture: {e:?} ({pending:?})"))?
        .ok_or("the capture recorded nothing")?;
    pending.map_err(|e| format!("after capture: {e:?}"))?;
    graph.upload().map_err(|e| format!("graph upload: {e:?}"))?;
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Local;
    use candle_core::Var;

    #[test]
    fn required_graphs_are_refused_off_cuda_with_the_reason_and_auto_runs_eager() {
        let Err(e) = StepGraphs::for_run(GraphMode::On, &Device::Cpu, &Local) else {
            panic!("graphs on the CPU")
        };
        assert!(e.to_string().contains("need a CUDA device"), "{e}");
        assert!(StepGraphs::for_run(GraphMode::Auto, &Device::Cpu, &Local)
            .unwrap()
            .is_none());
        assert!(StepGraphs::for_run(GraphMode::Off, &Device::Cpu, &Local)
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_mode_reads_its_names_and_the_booleans_of_older_runs() {
        #[derive(serde::Deserialize)]
        struct C {
            cuda_graph: GraphMode,
        }
        let mode = |s: &str| toml::from_str::<C>(s).map(|c| c.cuda_graph);
        assert_eq!(mode("cuda_graph = \"auto\"").unwrap(), GraphMode::Auto);
        assert_eq!(mode("cuda_graph = \"off\"").unwrap(), GraphMode::Off);
        assert_eq!(mode("cuda_graph = true").unwrap(), GraphMode::On);
        assert_eq!(mode("cuda_graph = false").unwrap(), GraphMode::Off);
        let e = mode("cuda_graph = \"sometimes\"").unwrap_err().to_string();
        assert!(e.contains("expected \"auto\""), "{e}");
    }

    /// A weight and a step that moves it by `rate` (a stand-in for a replay or an eager step).
    fn step_by(w: &Var, rate: f32) -> impl FnMut() -> Result<()> + '_ {
        move || {
            let next = (w.as_tensor() - rate as f64)?;
            w.set(&next)?;
            Ok(())
        }
    }

    #[test]
    fn a_replay_that_agrees_passes_and_the_state_is_the_eager_steps() {
        let w = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let state = vec![("w".to_string(), w.as_tensor().clone())];
        // The same step within rounding: agrees.
        let (mut replay, mut eager) = (step_by(&w, 0.1 + 1e-7), step_by(&w, 0.1));
        let verdict = replay_agrees(&state, &mut replay, &mut eager).unwrap();
        assert_eq!(verdict, None);
        assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), [0.9, 1.9]);
    }

    #[test]
    fn a_replay_that_froze_a_rate_or_went_non_finite_fails_naming_the_tensor() {
        let w = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let state = vec![("w".to_string(), w.as_tensor().clone())];
        let (mut replay, mut eager) = (step_by(&w, 0.2), step_by(&w, 0.1));
        let verdict = replay_agrees(&state, &mut replay, &mut eager).unwrap();
        let why = verdict.expect("a rate twice the eager one differs");
        assert!(why.contains("in w"), "{why}");
        // The eager step ran once, from the state before the replay.
        assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), [0.9, 1.9]);
        let (mut replay, mut eager) = (step_by(&w, f32::NAN), step_by(&w, 0.1));
        let verdict = replay_agrees(&state, &mut replay, &mut eager).unwrap();
        assert!(verdict.is_some(), "a NaN replay must not pass");
    }

    #[test]
    fn a_count_may_differ_by_one_and_a_failed_replay_is_reported_with_the_eager_state_kept() {
        let hits = Var::new(&[10u32], &Device::Cpu).unwrap();
        let state = vec![("sums.hits".to_string(), hits.as_tensor().clone())];
        let add = |n: u32| {
            let hits = hits.clone();
            move || -> Result<()> {
                let more = Tensor::new(&[n], &Device::Cpu)?;
                hits.set(&(hits.as_tensor() + more)?)?;
                Ok(())
            }
        };
        let verdict = replay_agrees(&state, &mut add(4), &mut add(3)).unwrap();
        assert_eq!(verdict, None, "one argmax flip");
        let verdict = replay_agrees(&state, &mut add(5), &mut add(3)).unwrap();
        assert!(verdict.is_some_and(|w| w.contains("sums.hits")));
        let mut failing = || -> Result<()> { Err(Error::Unsupported("launch failed".into())) };
        let verdict = replay_agrees(&state, &mut failing, &mut add(3)).unwrap();
        assert!(verdict.is_some_and(|w| w.contains("the replay failed")));
        // Three eager steps of 3 from 10: no replay left a trace.
        assert_eq!(hits.as_tensor().to_vec1::<u32>().unwrap(), [19]);
    }
}
