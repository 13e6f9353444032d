//! Asking the CPU for memory before it is used: a lookup's next steps, a
//! scan's next entries, a buffer's next lines. A prefetch reads nothing
//! the program sees and never faults, whatever the address, so none of
//! these functions need a valid one.

/// Asks for the line at `addr` to read it.
#[inline]
pub fn read(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of x86_64, and a prefetch never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(addr as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// [`read`] of every line of the `len` bytes at `addr`.
#[inline]
pub fn read_lines(addr: usize, len: usize) {
    for line in (addr & !63..addr + len).step_by(64) {
        read(line);
    }
}

/// Asks for the line at `addr` to write it (x86's PREFETCHW). A buffer
/// filled a little at a time, whose lines left the cache since it was last
/// used, otherwise takes each new line's miss at the next locked
/// instruction, which waits until every store before it is done.
#[inline]
pub fn write(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults; CPUs without PREFETCHW run it as a
    // NOP.
    unsafe {
        std::arch::asm!("prefetchw [{0}]", in(reg) addr, options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(target_arch = "x86_64"))]
    read(addr);
}

/// [`write`] of every line of the `len` bytes at `addr`.
#[inline]
pub fn write_lines(addr: usize, len: usize) {
    for line in (addr & !63..addr + len).step_by(64) {
        write(line);
    }
}
