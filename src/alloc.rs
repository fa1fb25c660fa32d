//! Settings for mimalloc, the binaries' global allocator.
//!
//! candle allocates a fresh buffer for every tensor, so a training step frees and reallocates
//! hundreds of megabytes. By default mimalloc hands freed memory back to the OS after 10 ms, and
//! every step then pays to fault and zero it again (`clear_page` was 16–40% of a `tiny` step's
//! cycles under perf). Keeping it mapped costs nothing a trainer cares about: the peak is the
//! same, it is simply held.

/// mimalloc's `mi_option_purge_delay` (index 15 in `mi_option_e` of mimalloc 2.x and 3.x; the
/// Rust bindings do not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the OS. Call first thing in `main`, before
/// other threads start (mimalloc's option setter is not thread-safe).
pub fn keep_freed_memory() {
    // SAFETY: sets a plain integer option; called before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_option_index_is_purge_delay() {
        super::keep_freed_memory();
        // SAFETY: reads an integer option.
        let got = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(got, -1);
        // The neighbouring index (eager_commit_delay) keeps its default of 1, so 15 is not it.
        let neighbour = unsafe { libmimalloc_sys::mi_option_get(14) };
        assert_eq!(neighbour, 1);
    }
}
