//! Recycled batch buffers: the producer fills, the consumer reads, dropping the guard returns
//! the buffer, so steady state allocates nothing and at most `capacity` buffers ever exist.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use crate::augment::Batch;

/// A batch on loan from a [`Recycler`]; dropping it sends the buffer home.
pub struct BatchGuard {
    batch: Option<Batch>,
    home: Sender<Batch>,
    /// The consumer's count of guards it holds, once the batch is handed over.
    held: Option<Arc<AtomicUsize>>,
}

impl BatchGuard {
    /// Counts this guard among the consumer's until it is dropped.
    pub(crate) fn hand_over(&mut self, held: &Arc<AtomicUsize>) {
        held.fetch_add(1, Ordering::Relaxed);
        self.held = Some(held.clone());
    }
}

impl Deref for BatchGuard {
    type Target = Batch;
    fn deref(&self) -> &Batch {
        self.batch.as_ref().expect("present until drop")
    }
}

impl DerefMut for BatchGuard {
    fn deref_mut(&mut self) -> &mut Batch {
        self.batch.as_mut().expect("present until drop")
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            held.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(b) = self.batch.take() {
            // The producer may be gone; then the buffer is simply freed.
            let _ = self.home.send(b);
        }
    }
}

/// A bounded pool of batch buffers.
pub struct Recycler {
    free: Receiver<Batch>,
    home: Sender<Batch>,
    created: Arc<AtomicUsize>,
    capacity: usize,
    batch_size: usize,
    image_len: usize,
}

impl Recycler {
    /// A pool that never holds more than `capacity` buffers of `batch_size × image_len` floats.
    pub fn new(capacity: usize, batch_size: usize, image_len: usize) -> Self {
        let (home, free) = mpsc::channel();
        Recycler {
            free,
            home,
            created: Arc::new(AtomicUsize::new(0)),
            capacity: capacity.max(1),
            batch_size,
            image_len,
        }
    }

    /// Buffers allocated so far (never above the capacity).
    pub fn created(&self) -> Arc<AtomicUsize> {
        self.created.clone()
    }

    /// A free buffer: a returned one, a new one while under capacity, or the next one returned.
    /// Gives up (`None`) once `halt` says so (checked every 20 ms while waiting).
    pub fn take(&self, halt: &dyn Fn() -> bool) -> Option<BatchGuard> {
        let guard = |batch| BatchGuard {
            batch: Some(batch),
            home: self.home.clone(),
            held: None,
        };
        if let Ok(b) = self.free.try_recv() {
            return Some(guard(b));
        }
        if self.created.load(Ordering::Relaxed) < self.capacity {
            self.created.fetch_add(1, Ordering::Relaxed);
            return Some(guard(Batch::with_capacity(self.batch_size, self.image_len)));
        }
        loop {
            match self.free.recv_timeout(Duration::from_millis(20)) {
                Ok(b) => return Some(guard(b)),
                Err(RecvTimeoutError::Timeout) if !halt() => continue,
                Err(_) => return None,
            }
        }
    }
}
