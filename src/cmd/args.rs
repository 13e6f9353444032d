//! A cursor over a command's arguments, for option parsing: each option is
//! consumed once, in order, and a missing value is a syntax error.

use super::{int_arg, Error};

/// The arguments after a command's fixed ones.
pub struct Args<'a> {
    args: &'a [&'a [u8]],
    pos: usize,
}

impl<'a> Args<'a> {
    /// A cursor starting at `args[from]`.
    pub fn new(args: &'a [&'a [u8]], from: usize) -> Args<'a> {
        Args {
            args,
            pos: from.min(args.len()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.args.len()
    }

    /// How many arguments are left.
    pub fn remaining(&self) -> usize {
        self.args.len() - self.pos
    }

    /// Consumes the next argument if it is the option `name` (any case).
    pub fn eat(&mut self, name: &str) -> bool {
        match self.args.get(self.pos) {
            Some(a) if a.eq_ignore_ascii_case(name.as_bytes()) => {
                self.pos += 1;
                true
            }
            _ => false,
        }
    }

    /// The value of an option just eaten; missing is a syntax error.
    pub fn value(&mut self) -> Result<&'a [u8], Error> {
        self.next().ok_or(Error::Syntax)
    }

    /// An integer option value.
    pub fn int(&mut self) -> Result<i64, Error> {
        int_arg(self.value()?)
    }

    /// Everything not yet consumed.
    pub fn rest(&mut self) -> &'a [&'a [u8]] {
        let rest = &self.args[self.pos..];
        self.pos = self.args.len();
        rest
    }
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let a = self.args.get(self.pos).copied()?;
        self.pos += 1;
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_consumed_in_order_and_a_missing_value_is_a_syntax_error() {
        let argv: Vec<&[u8]> = vec![b"scan", b"0", b"match", b"k*", b"COUNT", b"10", b"TYPE"];
        let mut a = Args::new(&argv, 2);
        assert!(!a.eat("COUNT"));
        assert!(a.eat("MATCH"));
        assert_eq!(a.value().unwrap(), b"k*");
        assert!(a.eat("count"));
        assert_eq!(a.int().unwrap(), 10);
        assert_eq!(a.remaining(), 1);
        assert!(a.eat("TYPE"));
        assert_eq!(a.value(), Err(Error::Syntax));
        assert!(a.is_empty());
    }
}
