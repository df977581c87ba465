//! Software prefetch for random row access. Lookups and sparse updates visit rows of
//! gigabyte tables in an order the hardware prefetcher cannot guess; asking for the row a
//! few iterations ahead overlaps those cache misses instead of paying them one by one.

/// How many rows ahead to prefetch.
pub(crate) const DISTANCE: usize = 8;

/// Hints that the cache line at `ptr` will be read soon. Never faults, whatever `ptr` is.
#[inline(always)]
pub(crate) fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it does not dereference and cannot fault.
    unsafe {
        core::arch::x86_64::_mm_prefetch(ptr as *const i8, core::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}
