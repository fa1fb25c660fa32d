//! Whether a run's training steps are captured as CUDA graphs (what `train::graph` does with it).

use serde::{Deserialize, Serialize};

/// Whether a run's training steps are CUDA graphs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphMode {
    /// Graphs on CUDA for a lone process; eager elsewhere (the default).
    #[default]
    Auto,
    /// Graphs required: refused off CUDA and with several ranks (`--cuda-graph`).
    On,
    /// Eager steps (`--no-cuda-graph`).
    Off,
}

impl<'de> Deserialize<'de> for GraphMode {
    /// `"auto"`, `"on"` or `"off"`; or a boolean, as runs saved before the mode existed wrote it
    /// (`true`: on, `false`: off).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Flag(bool),
            Name(String),
        }
        match Stored::deserialize(d)? {
            Stored::Flag(true) => Ok(GraphMode::On),
            Stored::Flag(false) => Ok(GraphMode::Off),
            Stored::Name(n) => match n.as_str() {
                "auto" => Ok(GraphMode::Auto),
                "on" => Ok(GraphMode::On),
                "off" => Ok(GraphMode::Off),
                _ => Err(serde::de::Error::custom(format!(
                    "cuda_graph = {n:?}: expected \"auto\", \"on\" or \"off\""
                ))),
            },
        }
    }
}
