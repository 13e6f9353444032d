//! The process's allocator: the system's (glibc malloc), counting what it
//! hands out, as Redis's zmalloc does. `used_memory` and `maxmemory` need
//! the bytes the data holds, which the RSS is not (it keeps freed pages and
//! lags behind frees); jemalloc, which reports it itself, cost 54 more bytes
//! of RSS per small key here (docs/benchmarks.md).
//!
//! Each thread adds to its own cache-line-sized stripe, so that two server
//! threads allocating at once do not fight over one counter (and, the
//! stripe being its alone, without a locked instruction); the total is the
//! sum of the stripes. Stripes are never handed back: the 31st thread the
//! process ever starts, and every later one, share the last stripe with an
//! atomic add (tokio's blocking pool starts threads as it needs them) (a block freed by another thread than the one
//! that allocated it makes one stripe go down and another up: the sum is
//! still right).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};

const STRIPES: usize = 32;

#[repr(align(64))]
struct Stripe(AtomicIsize);

static COUNTS: [Stripe; STRIPES] = [const { Stripe(AtomicIsize::new(0)) }; STRIPES];
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);
static PEAK: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // No destructor (a `Cell<usize>`), so it is there for as long as the
    // thread allocates, even while it exits.
    static MY_STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Inside [`Uncounted`]: allocations go to `ENGINE`, not the stripes.
    static UNCOUNTED: Cell<bool> = const { Cell::new(false) };
}

/// What the store engine holds (its page cache and write buffers), which
/// `used_bytes` leaves out: see [`Uncounted`].
static ENGINE: AtomicIsize = AtomicIsize::new(0);

/// The stripe threads share once every other one is taken.
const SHARED: usize = STRIPES - 1;

/// Adds `delta` to this thread's stripe: a plain load and store where the
/// stripe is the thread's alone (no locked instruction on the hot path),
/// an atomic add on the shared one.
fn count(delta: isize) {
    if UNCOUNTED.try_with(Cell::get).unwrap_or(false) {
        ENGINE.fetch_add(delta, Ordering::Relaxed);
        return;
    }
    let i = MY_STRIPE
        .try_with(|mine| {
            let mut i = mine.get();
            if i == usize::MAX {
                i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed).min(SHARED);
                mine.set(i);
            }
            i
        })
        .unwrap_or(SHARED);
    let stripe = &COUNTS[i].0;
    if i == SHARED {
        stripe.fetch_add(delta, Ordering::Relaxed);
    } else {
        // Wrapping: a panic inside the allocator would abort the process.
        stripe.store(
            stripe.load(Ordering::Relaxed).wrapping_add(delta),
            Ordering::Relaxed,
        );
    }
}

/// What malloc takes for a request: glibc's chunk (the size plus an
/// 8-byte header, in 16-byte steps, 32 at least); a block past its mmap
/// threshold takes whole pages.
fn charged(size: usize, align: usize) -> isize {
    let size = size + align.saturating_sub(16);
    let chunk = if size >= 128 * 1024 {
        (size + 16 + 4095) & !4095
    } else {
        ((size + 8 + 15) & !15).max(32)
    };
    chunk as isize
}

/// The system allocator, counted. Installed by the binary
/// (`#[global_allocator]`).
pub struct Counting;

impl Counting {
    pub const fn new() -> Counting {
        Counting
    }
}

impl Default for Counting {
    fn default() -> Self {
        Counting::new()
    }
}

// SAFETY: every call goes to `System` unchanged; the counting around it
// touches only atomics and a destructor-free thread-local, and allocates
// nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(charged(layout.size(), layout.align()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(charged(layout.size(), layout.align()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        count(-charged(layout.size(), layout.align()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let grew = charged(new_size, layout.align()) - charged(layout.size(), layout.align());
            count(grew);
        }
        p
    }
}

/// Marks the counting allocator as the process's (the binary's `main`
/// does): until then `used_bytes` knows nothing and says so with `None`.
pub fn installed() {
    INSTALLED.store(true, Ordering::Relaxed);
}

/// Hands the allocator's free pages back to the system (glibc's
/// `malloc_trim`): RSS follows what the process holds after it freed much
/// at once. It walks the heap, holding each arena's lock meanwhile.
pub fn give_back_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists and hands
    // whole free pages back.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes the process holds from the allocator now (`None` where the
/// counting allocator is not installed: library tests, embedders).
pub fn used_bytes() -> Option<usize> {
    if !INSTALLED.load(Ordering::Relaxed) {
        return None;
    }
    let sum = COUNTS.iter().fold(0isize, |sum, s| {
        sum.wrapping_add(s.0.load(Ordering::Relaxed))
    });
    let used = sum.max(0) as usize;
    if used > PEAK.load(Ordering::Relaxed) {
        PEAK.fetch_max(used, Ordering::Relaxed);
    }
    Some(used)
}

/// While one lives, this thread's allocations and frees are the store
/// engine's, left out of `used_bytes` (so of `maxmemory`), as Redis's
/// zmalloc never sees what RocksDB allocates under KeyDB's flash tier: the
/// engine's cache is bounded by its own setting, and counting it would make
/// eviction push keys out to make room for the engine's copies of them.
///
/// A block must be freed on the side it was allocated on, or the counts
/// drift: what the engine hands back (a value read, a key loaded) is made
/// inside [`counted`].
pub struct Uncounted {
    was: bool,
}

impl Uncounted {
    pub fn begin() -> Uncounted {
        Uncounted {
            was: UNCOUNTED.with(|u| u.replace(true)),
        }
    }
}

impl Drop for Uncounted {
    fn drop(&mut self) {
        UNCOUNTED.with(|u| u.set(self.was));
    }
}

/// Runs `f` counted, inside an [`Uncounted`] stretch or not.
pub fn counted<R>(f: impl FnOnce() -> R) -> R {
    let was = UNCOUNTED.with(|u| u.replace(false));
    let result = f();
    UNCOUNTED.with(|u| u.set(was));
    result
}

/// What the store engine holds now (approximately: see [`Uncounted`]).
pub fn engine_bytes() -> usize {
    ENGINE.load(Ordering::Relaxed).max(0) as usize
}

static STARTUP: AtomicUsize = AtomicUsize::new(0);

/// Records what the process holds once it is ready to serve (MEMORY
/// STATS' `startup.allocated`).
pub fn mark_startup() {
    if let Some(used) = used_bytes() {
        STARTUP.store(used, Ordering::Relaxed);
    }
}

pub fn startup_bytes() -> usize {
    STARTUP.load(Ordering::Relaxed)
}

/// The most `used_bytes` has reported.
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uncounted_stretch_counts_apart_and_ends_with_its_guard() {
        // Library tests do not install the allocator: the counts are
        // driven directly, with a charge far larger than anything other
        // test threads allocate meanwhile.
        const BIG: isize = 1 << 40;
        let stripes = || {
            COUNTS
                .iter()
                .fold(0isize, |s, c| s.wrapping_add(c.0.load(Ordering::Relaxed)))
        };
        let near = |a: isize, b: isize| (a - b).abs() < 1 << 30;
        let (engine, counted_before) = (ENGINE.load(Ordering::Relaxed), stripes());
        {
            let _engine = Uncounted::begin();
            count(BIG);
            assert!(near(ENGINE.load(Ordering::Relaxed), engine + BIG));
            assert!(near(stripes(), counted_before));
            counted(|| count(BIG));
            assert!(near(stripes(), counted_before + BIG), "counted inside");
            assert!(UNCOUNTED.with(Cell::get), "still uncounted after");
            {
                let _nested = Uncounted::begin();
            }
            assert!(UNCOUNTED.with(Cell::get), "a nested guard restores");
            count(-BIG);
        }
        assert!(!UNCOUNTED.with(Cell::get));
        count(-BIG);
        assert!(near(ENGINE.load(Ordering::Relaxed), engine));
        assert!(near(stripes(), counted_before));
    }

    #[test]
    fn charges_follow_glibc_chunks() {
        assert_eq!(charged(1, 1), 32);
        assert_eq!(charged(24, 8), 32);
        assert_eq!(charged(25, 8), 48);
        assert_eq!(charged(100, 8), 112);
        assert_eq!(charged(1 << 20, 8), (1 << 20) + 4096);
    }
}
