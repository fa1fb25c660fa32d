//! The capture check: what a step must be for a CUDA graph to replay it, checked on any device.
//!
//! A graph replays the ops it recorded with the arguments they had and the memory they used.
//! So a step is capturable when (1) it is the same every step: the same ops with the same
//! by-value scalars, no upload of data that changes per step, nothing read back to the host;
//! and (2) what lives across steps stays where it is: each persistent tensor keeps its identity
//! and storage, written in place. The probe in the vendored candle-core
//! (`candle_core::probe`, tools/patch_candle_probe.py) records (1); a [`Registry`] checks (2).

use candle_core::probe::{self, Event};
use candle_core::{CpuStorage, Storage, Tensor, TensorId};

/// Why a step cannot be captured as it is.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Two steps ran different ops, or the same op with different by-value arguments or data.
    #[error(
        "the step is not the same every step (a per-step value passed by value, a host branch \
         or a fresh upload): event {index} was `{before}` at step {first} and `{after}` at step \
         {second}"
    )]
    Differs {
        /// Position in the step's trace.
        index: usize,
        /// The earlier step (0-based, global).
        first: usize,
        /// The later step.
        second: usize,
        /// What the earlier step did there (`end of step` past its last event).
        before: String,
        /// What the later step did there.
        after: String,
    },
    /// The step read a value back to the host: a graph cannot, and it stalls a GPU.
    #[error("step {step} reads back to the host inside the step: {event} (event {index})")]
    Reads {
        /// The step.
        step: usize,
        /// Position in its trace.
        index: usize,
        /// The read.
        event: String,
    },
    /// A tensor that lives across steps was replaced rather than written in place.
    #[error(
        "tensor {name} was replaced between steps {first} and {second} (a new tensor or storage): \
         state that lives across steps must be written in place"
    )]
    Replaced {
        /// The tensor.
        name: String,
        /// The step before.
        first: usize,
        /// The step after.
        second: usize,
    },
}

/// Runs `f` with this thread's storage ops recorded; returns its result and the trace.
pub fn record<R>(f: impl FnOnce() -> R) -> (R, Vec<Event>) {
    probe::start();
    let out = f();
    (out, probe::stop())
}

/// Checks step `second`'s trace against step `first`'s: no reads, and event for event the same.
pub fn compare(
    (first, a): (usize, &[Event]),
    (second, b): (usize, &[Event]),
) -> Result<(), CaptureError> {
    for (step, trace) in [(first, a), (second, b)] {
        if let Some(index) = trace.iter().position(|e| matches!(e, Event::Read { .. })) {
            let event = trace[index].to_string();
            return Err(CaptureError::Reads { step, index, event });
        }
    }
    let index = match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => i,
        None if a.len() == b.len() => return Ok(()),
        None => a.len().min(b.len()),
    };
    let show = |t: &[Event]| t.get(index).map_or("end of step".into(), |e| e.to_string());
    Err(CaptureError::Differs {
        index,
        first,
        second,
        before: show(a),
        after: show(b),
    })
}

/// Where a persistent tensor lives: its id and, on the CPU, its data's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Place {
    id: TensorId,
    address: Option<usize>,
}

impl Place {
    fn of(t: &Tensor) -> Place {
        let (storage, _) = t.storage_and_layout();
        let address = match &*storage {
            Storage::Cpu(CpuStorage::F32(v)) => Some(v.as_ptr() as usize),
            Storage::Cpu(CpuStorage::F64(v)) => Some(v.as_ptr() as usize),
            Storage::Cpu(CpuStorage::U32(v)) => Some(v.as_ptr() as usize),
            _ => None,
        };
        Place {
            id: t.id(),
            address,
        }
    }
}

/// The places of the tensors that live across steps, by name, taken after one step.
pub struct Registry {
    step: usize,
    places: Vec<(String, Place)>,
}

impl Registry {
    /// The places of `named` after step `step`.
    pub fn take(step: usize, named: &[(String, Tensor)]) -> Registry {
        let places = named
            .iter()
            .map(|(n, t)| (n.clone(), Place::of(t)))
            .collect();
        Registry { step, places }
    }

    /// Checks that after step `step` every tensor registered is still where it was (a name that
    /// no longer appears counts as replaced).
    pub fn check(&self, step: usize, named: &[(String, Tensor)]) -> Result<(), CaptureError> {
        for (name, place) in &self.places {
            let now = named
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| Place::of(t));
            if now != Some(*place) {
                return Err(CaptureError::Replaced {
                    name: name.clone(),
                    first: self.step,
                    second: step,
                });
            }
        }
        Ok(())
    }
}

/// The check over a run: each step's trace against the previous step's of the same epoch (a
/// graph is captured per set of frozen parameters, which changes only between epochs), and
/// the persistent tensors' places against the previous step's. The first step of a run is
/// warm-up (momentum starts there, modules load) and is not compared.
#[derive(Default)]
pub struct CaptureCheck {
    /// The first step it saw (warm-up).
    first: Option<usize>,
    previous: Option<(usize, usize, Vec<Event>)>,
    registry: Option<Registry>,
}

impl CaptureCheck {
    /// Whether step `step` is recorded (every step after the first it sees).
    pub fn records(&self, step: usize) -> bool {
        self.first.is_some_and(|first| step > first)
    }

    /// After step `step` of epoch `epoch` with its `trace` (if recorded) and the tensors that
    /// live across steps: compares both with the step before.
    pub fn after_step(
        &mut self,
        epoch: usize,
        step: usize,
        trace: Option<Vec<Event>>,
        persistent: &[(String, Tensor)],
    ) -> Result<(), CaptureError> {
        self.first.get_or_insert(step);
        if let Some(registry) = &self.registry {
            registry.check(step, persistent)?;
        }
        self.registry = Some(Registry::take(step, persistent));
        let Some(trace) = trace else { return Ok(()) };
        if let Some((e, s, previous)) = &self.previous {
            if *e == epoch {
                compare((*s, previous), (step, &trace))?;
            }
        }
        self.previous = Some((epoch, step, trace));
        Ok(())
    }
}
