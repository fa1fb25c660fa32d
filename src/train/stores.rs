//! The two stores a run reads, opened and checked against each other and the model before the
//! run folder is touched.

use std::sync::Arc;

use super::error::{Error, Result};
use crate::store::{Header, Reader, Split};
use crate::train::config::TrainConfig;

/// The training and test stores of `config.data`.
pub struct Stores {
    /// The training split.
    pub train: Arc<Reader>,
    /// The test split.
    pub test: Arc<Reader>,
    /// The training split's header (classes, shape, mean and std).
    pub header: Header,
}

impl Stores {
    /// Opens both splits, refusing classes or channels the model does not take and a test split
    /// of other images or classes than the training split's.
    pub fn open(config: &TrainConfig) -> Result<Stores> {
        let train = Arc::new(Reader::open(Split::Train.path_in(&config.data))?);
        let test = Arc::new(Reader::open(Split::Test.path_in(&config.data))?);
        let header = train.header().clone();
        if header.classes.len() != config.model.num_classes() {
            return Err(Error::Unsupported(format!(
                "the store has {} classes, the model {}",
                header.classes.len(),
                config.model.num_classes()
            )));
        }
        if header.shape.channels as usize != config.model.in_channels() {
            return Err(Error::Unsupported(format!(
                "the store's images have {} channels, the model takes {}",
                header.shape.channels,
                config.model.in_channels()
            )));
        }
        if test.shape() != header.shape || test.classes() != header.classes {
            return Err(Error::Unsupported(format!(
                "{} and {} hold different image shapes or classes",
                train.path().display(),
                test.path().display()
            )));
        }
        Ok(Stores {
            train,
            test,
            header,
        })
    }
}
