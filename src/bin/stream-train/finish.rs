//! What a command reports back to `main`.

/// Success, or stopped by Ctrl-C (exit 130).
pub enum Finish {
    /// Done.
    Done,
    /// Interrupted; what was saved can be resumed.
    Interrupted,
}
