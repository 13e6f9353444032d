//! Bit commands on strings (Redis's `bitops.c`). A write computes the
//! whole resulting value locally and replicates it as a register write
//! (DESIGN.md: bit and range commands write the whole value), keeping the
//! key's TTL as Redis does.

use super::Flag::*;
use super::{int_arg, is, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};

pub static COMMANDS: &[Spec] = &[
    Spec { name: "setbit", arity: 4, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 1, 1), group: "bitmap", syntax: "key offset value", summary: "Sets or clears the bit at offset of the string value. Creates the key if it doesn't exist.", run: setbit },
    Spec { name: "getbit", arity: 3, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "bitmap", syntax: "key offset", summary: "Returns a bit value by offset.", run: getbit },
    Spec { name: "bitcount", arity: -2, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "bitmap", syntax: "key [start end [BYTE|BIT]]", summary: "Counts the number of set bits (population counting) in a string.", run: bitcount },
    Spec { name: "bitpos", arity: -3, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "bitmap", syntax: "key bit [start [end [BYTE|BIT]]]", summary: "Finds the first set (1) or clear (0) bit in a string.", run: bitpos },
    Spec { name: "bitfield", arity: -2, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 1, 1), group: "bitmap", syntax: "key [GET encoding offset | [OVERFLOW WRAP|SAT|FAIL] SET encoding offset value | INCRBY encoding offset increment ...]", summary: "Performs arbitrary bitfield integer operations on strings.", run: bitfield },
    Spec { name: "bitfield_ro", arity: -2, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "bitmap", syntax: "key [GET encoding offset ...]", summary: "Performs arbitrary read-only bitfield integer operations on strings.", run: bitfield_ro },
    Spec { name: "bitop", arity: -4, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(2, -1, 1), group: "bitmap", syntax: "AND|OR|XOR|NOT destkey key [key ...]", summary: "Performs bitwise operations on multiple strings, and stores the result.", run: bitop },
];

/// Bit offsets go up to 2^32 - 1, as in Redis (a 512 MB string).
const MAX_BIT_OFFSET: i64 = (1 << 32) - 1;

fn bit_offset(arg: &[u8]) -> Result<usize, Error> {
    match int_arg(arg) {
        Ok(n) if (0..=MAX_BIT_OFFSET).contains(&n) => Ok(n as usize),
        _ => Err(Error::err("bit offset is not an integer or out of range")),
    }
}

/// BITPOS's bit: an integer first (Redis's error for one that is not),
/// then 0 or 1.
fn bit_arg(arg: &[u8]) -> Result<u8, Error> {
    match int_arg(arg)? {
        0 => Ok(0),
        1 => Ok(1),
        _ => Err(Error::err("The bit argument must be 1 or 0.")),
    }
}

fn bit_at(value: &[u8], offset: usize) -> u8 {
    value
        .get(offset / 8)
        .map_or(0, |byte| (byte >> (7 - offset % 8)) & 1)
}

fn setbit(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let offset = bit_offset(args[2])?;
    let on = match int_arg(args[3]) {
        Ok(0) => false,
        Ok(1) => true,
        _ => return Err(Error::err("bit is not an integer or out of range")),
    };
    let max = x.server.tunables.max_bulk();
    let old = x.update(args[1], |w| {
        let at = w.kept_expiry();
        let mut value = super::str_value(w)?.unwrap_or_default();
        let byte = offset / 8;
        if byte >= value.len() {
            if byte + 1 > max {
                return Err(Error::err(
                    "string exceeds maximum allowed size (proto-max-bulk-len)",
                ));
            }
            value.resize(byte + 1, 0);
        }
        let mask = 1u8 << (7 - offset % 8);
        let old = u8::from(value[byte] & mask != 0);
        if on {
            value[byte] |= mask;
        } else {
            value[byte] &= !mask;
        }
        w.set(Some(&value), at);
        Ok(old)
    })?;
    x.out.int(i64::from(old));
    Ok(())
}

fn getbit(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let offset = bit_offset(args[2])?;
    let value = x.value(args[1])?.unwrap_or_default();
    x.out.int(i64::from(bit_at(&value, offset)));
    Ok(())
}

/// A `[start end [BYTE|BIT]]` range over a string of `len` bytes, resolved
/// to bit positions `first..=last` (`None`: empty).
fn bit_range(start: i64, end: i64, in_bits: bool, len: usize) -> Option<(usize, usize)> {
    let total = if in_bits { len as i64 * 8 } else { len as i64 };
    let clamp = |i: i64| if i < 0 { (total + i).max(0) } else { i };
    let (start, end) = (clamp(start), clamp(end).min(total - 1));
    if total == 0 || start > end {
        return None;
    }
    Some(if in_bits {
        (start as usize, end as usize)
    } else {
        (start as usize * 8, end as usize * 8 + 7)
    })
}

fn unit_arg(arg: &[u8]) -> Result<bool, Error> {
    if is(arg, "BIT") {
        Ok(true)
    } else if is(arg, "BYTE") {
        Ok(false)
    } else {
        Err(Error::Syntax)
    }
}

fn count_ones(value: &[u8], first: usize, last: usize) -> u64 {
    let (first_byte, last_byte) = (first / 8, last / 8);
    let mut n = 0u64;
    for (i, byte) in value[first_byte..=last_byte].iter().enumerate() {
        let at = first_byte + i;
        let mut b = *byte;
        if at == first_byte {
            b &= 0xff >> (first % 8);
        }
        if at == last_byte {
            b &= 0xff << (7 - last % 8);
        }
        n += u64::from(b.count_ones());
    }
    n
}

fn bitcount(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (range, in_bits) = match args.len() {
        2 => (None, false),
        4 => ((Some((int_arg(args[2])?, int_arg(args[3])?))), false),
        5 => (
            Some((int_arg(args[2])?, int_arg(args[3])?)),
            unit_arg(args[4])?,
        ),
        _ => return Err(Error::Syntax),
    };
    let value = x.value(args[1])?.unwrap_or_default();
    let span = match range {
        None if value.is_empty() => None,
        None => Some((0, value.len() * 8 - 1)),
        Some((start, end)) => bit_range(start, end, in_bits, value.len()),
    };
    let n = span.map_or(0, |(first, last)| count_ones(&value, first, last));
    x.out.int(n as i64);
    Ok(())
}

fn bitpos(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let bit = bit_arg(args[2])?;
    if args.len() > 6 {
        return Err(Error::Syntax);
    }
    let start = args.get(3).map(|a| int_arg(a)).transpose()?;
    let end = args.get(4).map(|a| int_arg(a)).transpose()?;
    let in_bits = args
        .get(5)
        .map(|a| unit_arg(a))
        .transpose()?
        .unwrap_or(false);
    let Some(value) = x.value(args[1])? else {
        // A missing key is an empty string: no 1 anywhere, a 0 at once.
        x.out.int(if bit == 1 { -1 } else { 0 });
        return Ok(());
    };
    let len = value.len() as i64;
    let span = bit_range(
        start.unwrap_or(0),
        end.unwrap_or(if in_bits { len * 8 - 1 } else { len - 1 }),
        in_bits,
        value.len(),
    );
    let Some((first, last)) = span else {
        x.out.int(-1);
        return Ok(());
    };
    match (first..=last).find(|i| bit_at(&value, *i) == bit) {
        Some(i) => x.out.int(i as i64),
        // Looking for a clear bit with no end given: the string reads as
        // padded with zeros on the right, so the first one is past it.
        None if bit == 0 && end.is_none() => x.out.int(len * 8),
        None => x.out.int(-1),
    }
    Ok(())
}

fn bitop(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    #[derive(Clone, Copy, PartialEq)]
    enum Op {
        And,
        Or,
        Xor,
        Not,
    }
    let op = match args[1] {
        o if is(o, "AND") => Op::And,
        o if is(o, "OR") => Op::Or,
        o if is(o, "XOR") => Op::Xor,
        o if is(o, "NOT") => Op::Not,
        _ => return Err(Error::Syntax),
    };
    let sources = &args[3..];
    if op == Op::Not && sources.len() != 1 {
        return Err(Error::err(
            "BITOP NOT must be called with a single source key.",
        ));
    }
    let mut values = Vec::with_capacity(sources.len());
    for key in sources {
        values.push(x.value(key)?.unwrap_or_default());
    }
    let len = values.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = vec![0u8; len];
    for (i, byte) in out.iter_mut().enumerate() {
        let at = |v: &Vec<u8>| v.get(i).copied().unwrap_or(0);
        *byte = match op {
            Op::Not => !at(&values[0]),
            Op::And => values.iter().fold(0xff, |acc, v| acc & at(v)),
            Op::Or => values.iter().fold(0, |acc, v| acc | at(v)),
            Op::Xor => values.iter().fold(0, |acc, v| acc ^ at(v)),
        };
    }
    // An empty result deletes the destination, as in Redis.
    let dest = args[2];
    if out.is_empty() {
        x.delete(dest)?;
    } else {
        x.set_value(dest, Some(&out), 0)?;
    }
    x.out.int(len as i64);
    Ok(())
}

/// A BITFIELD integer type: `i1`..`i64` or `u1`..`u63`.
#[derive(Clone, Copy)]
struct Field {
    signed: bool,
    bits: u32,
}

impl Field {
    fn parse(arg: &[u8]) -> Result<Field, Error> {
        let bad = || {
            Error::err(
                "Invalid bitfield type. Use something like i16 u8. Note that u64 is not \
                 supported but i64 is.",
            )
        };
        let (signed, digits) = match arg.split_first() {
            Some((b'i' | b'I', rest)) => (true, rest),
            Some((b'u' | b'U', rest)) => (false, rest),
            _ => return Err(bad()),
        };
        let bits = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<u32>().ok())
            .filter(|b| *b >= 1 && *b <= if signed { 64 } else { 63 })
            .ok_or_else(bad)?;
        Ok(Field { signed, bits })
    }

    fn min(self) -> i128 {
        if self.signed {
            -(1i128 << (self.bits - 1))
        } else {
            0
        }
    }

    fn max(self) -> i128 {
        if self.signed {
            (1i128 << (self.bits - 1)) - 1
        } else {
            (1i128 << self.bits) - 1
        }
    }

    /// `v` taken modulo 2^bits, as the field reads it back.
    fn wrap(self, v: i128) -> i128 {
        let m = 1i128 << self.bits;
        let low = v.rem_euclid(m);
        if self.signed && low > self.max() {
            low - m
        } else {
            low
        }
    }

    fn get(self, value: &[u8], offset: usize) -> i128 {
        let mut v: i128 = 0;
        for i in 0..self.bits as usize {
            v = (v << 1) | i128::from(bit_at(value, offset + i));
        }
        self.wrap(v)
    }

    fn set(self, value: &mut Vec<u8>, offset: usize, v: i128) {
        let last_byte = (offset + self.bits as usize - 1) / 8;
        if value.len() <= last_byte {
            value.resize(last_byte + 1, 0);
        }
        for i in 0..self.bits as usize {
            let on = (v >> (self.bits as usize - 1 - i)) & 1 == 1;
            let at = offset + i;
            let mask = 1u8 << (7 - at % 8);
            if on {
                value[at / 8] |= mask;
            } else {
                value[at / 8] &= !mask;
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Overflow {
    Wrap,
    Sat,
    Fail,
}

enum FieldOp {
    Get(Field, usize),
    Set(Field, usize, i64, Overflow),
    IncrBy(Field, usize, i64, Overflow),
}

/// An offset: bits, or `#n` for n times the field's width.
fn field_offset(arg: &[u8], field: Field) -> Result<usize, Error> {
    let (times, digits) = match arg.split_first() {
        Some((b'#', rest)) => (field.bits as i64, rest),
        _ => (1, arg),
    };
    match int_arg(digits).ok().and_then(|n| n.checked_mul(times)) {
        Some(n) if (0..=MAX_BIT_OFFSET).contains(&n) => Ok(n as usize),
        _ => Err(Error::err("bit offset is not an integer or out of range")),
    }
}

/// BITFIELD's operations, read as Redis reads them: an operation without
/// all its arguments is a syntax error; BITFIELD_RO (`read_only`) takes
/// OVERFLOW, and refuses SET and INCRBY once every operation is read.
fn field_ops(args: &[&[u8]], read_only: bool) -> Result<Vec<FieldOp>, Error> {
    let mut writes = false;
    let mut ops = Vec::new();
    let mut overflow = Overflow::Wrap;
    let mut i = 2;
    while i < args.len() {
        let op = args[i];
        let needs = if is(op, "GET") {
            2
        } else if is(op, "SET") || is(op, "INCRBY") {
            3
        } else if is(op, "OVERFLOW") {
            1
        } else {
            return Err(Error::Syntax);
        };
        if args.len() - i - 1 < needs {
            return Err(Error::Syntax);
        }
        if is(op, "OVERFLOW") {
            let mode = args[i + 1];
            overflow = if is(mode, "WRAP") {
                Overflow::Wrap
            } else if is(mode, "SAT") {
                Overflow::Sat
            } else if is(mode, "FAIL") {
                Overflow::Fail
            } else {
                return Err(Error::err("Invalid OVERFLOW type specified"));
            };
            i += 2;
            continue;
        }
        let field = Field::parse(args[i + 1])?;
        let offset = field_offset(args[i + 2], field)?;
        if is(op, "GET") {
            ops.push(FieldOp::Get(field, offset));
            i += 3;
            continue;
        }
        writes = true;
        let n = int_arg(args[i + 3])?;
        ops.push(if is(op, "SET") {
            FieldOp::Set(field, offset, n, overflow)
        } else {
            FieldOp::IncrBy(field, offset, n, overflow)
        });
        i += 4;
    }
    if read_only && writes {
        return Err(Error::err("BITFIELD_RO only supports the GET subcommand"));
    }
    Ok(ops)
}

/// `v` fitted into `field` by `overflow`; `None` when FAIL refuses it.
fn fit(field: Field, v: i128, overflow: Overflow) -> Option<i128> {
    if (field.min()..=field.max()).contains(&v) {
        return Some(v);
    }
    match overflow {
        Overflow::Wrap => Some(field.wrap(v)),
        Overflow::Sat => Some(v.clamp(field.min(), field.max())),
        Overflow::Fail => None,
    }
}

fn bitfield(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let ops = field_ops(args, false)?;
    if ops.iter().all(|op| matches!(op, FieldOp::Get(..))) {
        return bitfield_reads(x, args[1], &ops);
    }
    let max = x.server.tunables.max_bulk();
    let results = x.update(args[1], |w| {
        let at = w.kept_expiry();
        let mut value = super::str_value(w)?.unwrap_or_default();
        let mut results: Vec<Option<i128>> = Vec::with_capacity(ops.len());
        let mut wrote = false;
        for op in &ops {
            let (field, offset) = match op {
                FieldOp::Get(f, o) | FieldOp::Set(f, o, ..) | FieldOp::IncrBy(f, o, ..) => (*f, *o),
            };
            if (offset + field.bits as usize).div_ceil(8) > max {
                return Err(Error::err(
                    "string exceeds maximum allowed size (proto-max-bulk-len)",
                ));
            }
            let old = field.get(&value, offset);
            match *op {
                FieldOp::Get(..) => results.push(Some(old)),
                FieldOp::Set(_, _, v, overflow) => match fit(field, i128::from(v), overflow) {
                    Some(new) => {
                        field.set(&mut value, offset, new);
                        wrote = true;
                        results.push(Some(old));
                    }
                    None => results.push(None),
                },
                FieldOp::IncrBy(_, _, by, overflow) => {
                    match fit(field, old + i128::from(by), overflow) {
                        Some(new) => {
                            field.set(&mut value, offset, new);
                            wrote = true;
                            results.push(Some(new));
                        }
                        None => results.push(None),
                    }
                }
            }
        }
        if wrote {
            w.set(Some(&value), at);
        }
        Ok(results)
    })?;
    x.out.array(results.len());
    for r in results {
        match r {
            Some(v) => x.out.int(v as i64),
            None => x.out.null(),
        }
    }
    Ok(())
}

fn bitfield_reads(x: &mut Exec, key: &[u8], ops: &[FieldOp]) -> CmdResult {
    let value = x.value(key)?.unwrap_or_default();
    x.out.array(ops.len());
    for op in ops {
        if let FieldOp::Get(field, offset) = op {
            x.out.int(field.get(&value, *offset) as i64);
        }
    }
    Ok(())
}

fn bitfield_ro(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let ops = field_ops(args, true)?;
    bitfield_reads(x, args[1], &ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_like_redis() {
        // "foobar": 6 bytes, 48 bits.
        assert_eq!(bit_range(0, -1, false, 6), Some((0, 47)));
        assert_eq!(bit_range(1, 1, false, 6), Some((8, 15)));
        assert_eq!(bit_range(5, 30, true, 6), Some((5, 30)));
        assert_eq!(bit_range(-2, -1, false, 6), Some((32, 47)));
        assert_eq!(bit_range(3, 1, false, 6), None);
        assert_eq!(bit_range(0, 100, false, 6), Some((0, 47)));
        assert_eq!(bit_range(0, -1, false, 0), None);
    }

    #[test]
    fn fields_wrap_saturate_and_fail_as_redis() {
        let u2 = Field::parse(b"u2").unwrap();
        let i8 = Field::parse(b"i8").unwrap();
        assert_eq!(fit(u2, 4, Overflow::Wrap), Some(0));
        assert_eq!(fit(u2, 4, Overflow::Sat), Some(3));
        assert_eq!(fit(u2, -1, Overflow::Sat), Some(0));
        assert_eq!(fit(u2, 4, Overflow::Fail), None);
        assert_eq!(fit(i8, 200, Overflow::Wrap), Some(-56));
        assert_eq!(fit(i8, -129, Overflow::Sat), Some(-128));
        let i64f = Field::parse(b"i64").unwrap();
        assert_eq!(
            fit(i64f, i128::from(i64::MAX) + 1, Overflow::Wrap),
            Some(i128::from(i64::MIN))
        );
        let mut v = Vec::new();
        i8.set(&mut v, 8, -56);
        assert_eq!(v, vec![0, 0xc8]);
        assert_eq!(i8.get(&v, 8), -56);
        assert!(Field::parse(b"u64").is_err() && Field::parse(b"i0").is_err());
    }

    #[test]
    fn ones_are_counted_within_partial_bytes() {
        let v = b"foobar";
        assert_eq!(count_ones(v, 0, 47), 26);
        assert_eq!(count_ones(v, 8, 15), 6);
        assert_eq!(count_ones(v, 5, 30), 17);
    }
}
