//! CRC-32C (Castagnoli), the delta log's record checksum: x86-64 (SSE4.2)
//! and aarch64 compute it in one instruction per eight bytes, where the
//! IEEE CRC-32 it replaced took a table lookup per byte: about 110
//! instructions of a logged SET's 4,000 went to checksumming its record.
//! A table serves CPUs without the instructions.

/// The CRC-32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2, checked just above.
        return unsafe { crc32c_sse42(bytes) };
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("crc") {
        // SAFETY: the CPU has the CRC instructions, checked just above.
        return unsafe { aarch64(bytes) };
    }
    by_table(bytes)
}

/// The reversed Castagnoli polynomial.
const POLYNOMIAL: u32 = 0x82f6_3b78;

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 == 1 {
                POLYNOMIAL ^ (c >> 1)
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn by_table(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// [`crc32c`] by the instructions; inlined into a caller that enables
/// SSE4.2 itself (a loop over many short pieces: the log's records).
///
/// # Safety
/// The CPU must have SSE4.2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
#[inline]
pub unsafe fn crc32c_sse42(bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};
    let mut c = !0u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        c = _mm_crc32_u64(c, u64::from_le_bytes(word.try_into().unwrap_or_default()));
    }
    let mut c = c as u32;
    // The tail in at most three steps, not a loop of up to seven.
    let mut rest = words.remainder();
    if let Some((word, after)) = rest.split_first_chunk::<4>() {
        c = _mm_crc32_u32(c, u32::from_le_bytes(*word));
        rest = after;
    }
    if let Some((half, after)) = rest.split_first_chunk::<2>() {
        c = _mm_crc32_u16(c, u16::from_le_bytes(*half));
        rest = after;
    }
    if let Some(&b) = rest.first() {
        c = _mm_crc32_u8(c, b);
    }
    !c
}

/// # Safety
/// The CPU must have the CRC instructions.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "crc")]
unsafe fn aarch64(bytes: &[u8]) -> u32 {
    use std::arch::aarch64::{__crc32cb, __crc32cd, __crc32ch, __crc32cw};
    let mut c = !0u32;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        c = __crc32cd(c, u64::from_le_bytes(word.try_into().unwrap_or_default()));
    }
    let mut rest = words.remainder();
    if let Some((word, after)) = rest.split_first_chunk::<4>() {
        c = __crc32cw(c, u32::from_le_bytes(*word));
        rest = after;
    }
    if let Some((half, after)) = rest.split_first_chunk::<2>() {
        c = __crc32ch(c, u16::from_le_bytes(*half));
        rest = after;
    }
    if let Some(&b) = rest.first() {
        c = __crc32cb(c, b);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The check values of the CRC catalogue and RFC 3720 (iSCSI), which
    /// defined CRC-32C's use.
    #[test]
    fn the_published_check_values() {
        for check in [crc32c, by_table] {
            assert_eq!(check(b""), 0);
            assert_eq!(check(b"123456789"), 0xe306_9283);
            assert_eq!(check(&[0u8; 32]), 0x8a91_36aa);
            assert_eq!(check(&[0xffu8; 32]), 0x62a8_ab43);
            let ascending: Vec<u8> = (0..32).collect();
            assert_eq!(check(&ascending), 0x46dd_794e);
        }
    }

    proptest! {
        /// The instructions and the table agree at every length and
        /// alignment.
        #[test]
        fn the_instructions_agree_with_the_table(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            skip in 0usize..8,
        ) {
            let bytes = &bytes[skip.min(bytes.len())..];
            prop_assert_eq!(crc32c(bytes), by_table(bytes));
        }
    }
}
