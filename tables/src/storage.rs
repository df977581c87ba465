//! The seam between tables and the memory that holds their rows.
//!
//! A shard's rows are one contiguous block of `rows x width` f32 values. Today that block
//! lives in RAM ([`InMemoryRows`]); tables larger than RAM will put it in a memory-mapped
//! file, which is also a contiguous `&mut [f32]`, so nothing above this trait changes.
//!
//! Lookups and sparse updates touch rows at random across gigabytes, so with 4 KiB pages
//! nearly every row access also misses the TLB. Large blocks are therefore aligned to
//! 2 MiB and marked `MADV_HUGEPAGE`, letting the kernel back them with huge pages where
//! transparent huge pages are enabled (the default `madvise` mode on most distributions).

use std::alloc::Layout;
use std::ptr::NonNull;

/// Contiguous row-major storage of f32 rows.
pub trait RowStorage: Send + Sync + std::fmt::Debug {
    fn as_slice(&self) -> &[f32];
    fn as_mut_slice(&mut self) -> &mut [f32];
    /// Bytes of memory this storage holds.
    fn bytes(&self) -> usize {
        std::mem::size_of_val(self.as_slice())
    }
}

const HUGE_PAGE: usize = 2 << 20;

/// Where a block's memory comes from.
#[derive(Debug, Clone, Copy)]
enum Backing {
    /// Nothing allocated (empty block).
    None,
    /// The global allocator (small blocks).
    Heap(Layout),
    /// An anonymous mapping of this many bytes, 2 MiB aligned, advised for huge pages;
    /// the kernel zero-fills pages on first touch.
    Mapped(usize),
}

/// Rows in anonymous memory (huge-page backed when large).
#[derive(Debug)]
pub struct InMemoryRows {
    ptr: NonNull<f32>,
    len: usize,
    backing: Backing,
}

// SAFETY: the block is owned exclusively by this value (no aliasing pointers escape
// except through borrows of `self`), so moving or sharing it across threads is as safe as
// for a `Vec<f32>`.
unsafe impl Send for InMemoryRows {}
// SAFETY: as for `Send`: shared access only reads through `&self`, as for a `Vec<f32>`.
unsafe impl Sync for InMemoryRows {}

/// A zero-filled anonymous mapping of at least `bytes`, aligned to 2 MiB, with
/// `MADV_HUGEPAGE` applied before any page is touched.
fn map_huge(bytes: usize) -> Option<(NonNull<f32>, usize)> {
    let size = bytes.div_ceil(HUGE_PAGE) * HUGE_PAGE;
    let span = size + HUGE_PAGE;
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let start = raw as usize;
    let aligned = start.div_ceil(HUGE_PAGE) * HUGE_PAGE;
    // SAFETY: the head [start, aligned) and the tail after aligned + size lie inside the
    // mapping just made and are not used; unmapping them leaves the aligned middle. The
    // advice covers only that middle and changes how its pages are backed, not contents.
    unsafe {
        if aligned > start {
            libc::munmap(raw, aligned - start);
        }
        let end = aligned + size;
        if start + span > end {
            libc::munmap(end as *mut libc::c_void, start + span - end);
        }
        // Advice only: without transparent huge pages this is a no-op. Only the 2 MiB
        // pages the rows fill are advised; the partial last one stays in 4 KiB pages, so
        // a table does not hold up to 2 MiB it never uses (52 tables of section 6's
        // DLRM held 40 MiB that way).
        let whole = bytes / HUGE_PAGE * HUGE_PAGE;
        libc::madvise(aligned as *mut libc::c_void, whole, libc::MADV_HUGEPAGE);
        if size > whole {
            let tail = (aligned + whole) as *mut libc::c_void;
            libc::madvise(tail, size - whole, libc::MADV_NOHUGEPAGE);
        }
    }
    NonNull::new(aligned as *mut f32).map(|p| (p, size))
}

/// A vector of room for `n` values whose memory is advised for huge pages before any
/// of it is touched (the interior 2 MiB pages of a large buffer; small ones as they come).
/// For indexes probed at random across many megabytes, as the rows are.
pub(crate) fn huge_page_vec<T>(n: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(n);
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes >= 2 * HUGE_PAGE {
        let start = (v.as_ptr() as usize).div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let end = (v.as_ptr() as usize + bytes) / HUGE_PAGE * HUGE_PAGE;
        // SAFETY: [start, end) lies inside the vector's own allocation; the advice
        // changes how its pages are backed, never their contents.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
    v
}

impl InMemoryRows {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        let bytes = len
            .checked_mul(4)
            .expect("row storage size overflows usize");
        if bytes == 0 {
            return Self {
                ptr: NonNull::dangling(),
                len: 0,
                backing: Backing::None,
            };
        }
        if bytes >= 2 * HUGE_PAGE {
            if let Some((ptr, size)) = map_huge(bytes) {
                return Self {
                    ptr,
                    len,
                    backing: Backing::Mapped(size),
                };
            }
        }
        let layout =
            Layout::from_size_align(bytes, std::mem::align_of::<f32>()).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw as *mut f32) else {
            std::alloc::handle_alloc_error(layout)
        };
        Self {
            ptr,
            len,
            backing: Backing::Heap(layout),
        }
    }

    /// `len` copies of `value`, every page touched now (so the first training steps do
    /// not pay for page faults, and the memory a table needs is taken at start-up).
    pub fn filled(len: usize, value: f32) -> Self {
        let mut s = Self::zeros(len);
        s.as_mut_slice().fill(value);
        s
    }

    pub fn from_vec(data: Vec<f32>) -> Self {
        let mut s = Self::zeros(data.len());
        s.as_mut_slice().copy_from_slice(&data);
        s
    }
}

impl Drop for InMemoryRows {
    fn drop(&mut self) {
        match self.backing {
            Backing::None => {}
            // SAFETY: allocated in `zeros` with exactly this layout.
            Backing::Heap(layout) => unsafe {
                std::alloc::dealloc(self.ptr.as_ptr() as *mut u8, layout)
            },
            // SAFETY: mapped in `map_huge` with exactly this address and size.
            Backing::Mapped(size) => unsafe {
                libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, size);
            },
        }
    }
}

impl RowStorage for InMemoryRows {
    fn as_slice(&self) -> &[f32] {
        // SAFETY: `ptr` points to `len` initialised f32 values we own (or is dangling with
        // len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as above, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_huge_blocks_hold_their_values() {
        for len in [0usize, 5, (5 << 20) / 4 + 3] {
            let mut s = InMemoryRows::filled(len, 1.5);
            assert_eq!(s.as_slice().len(), len);
            assert!(s.as_slice().iter().all(|&v| v == 1.5));
            if len > 0 {
                s.as_mut_slice()[len - 1] = 2.0;
                assert_eq!(s.as_slice()[len - 1], 2.0);
                assert_eq!(s.bytes(), len * 4);
            }
        }
        assert_eq!(
            InMemoryRows::from_vec(vec![1.0, 2.0]).as_slice(),
            &[1.0, 2.0]
        );
    }
}
