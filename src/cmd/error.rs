//! Command errors: one enum, one place that knows Redis's error codes
//! (`ERR`, `WRONGTYPE`, `NOAUTH`, ...), so that replies stay exact.

use std::borrow::Cow;

use crate::keyspace::NotLocked;

/// A command's error reply. Its `Display` is the reply text, code first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("ERR syntax error")]
    Syntax,
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    #[error("ERR value is not a valid float")]
    NotFloat,
    #[error("ERR no such key")]
    NoSuchKey,
    #[error("ERR DB index is out of range")]
    DbRange,
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value")]
    WrongType,
    #[error("NOAUTH Authentication required.")]
    NoAuth,
    /// NOAUTH with Redis's longer explanation (HELLO before AUTH).
    #[error("NOAUTH {0}")]
    NoAuthBecause(&'static str),
    #[error("WRONGPASS invalid username-password pair or user is disabled.")]
    WrongPass,
    #[error("EXECABORT Transaction discarded because of previous errors.")]
    ExecAbort,
    #[error("OOM command not allowed when used memory > 'maxmemory'.")]
    Oom,
    #[error("NOPROTO unsupported protocol version")]
    NoProto,
    #[error("ERR wrong number of arguments for '{0}' command")]
    Arity(Cow<'static, str>),
    #[error("BUSYKEY Target key name already exists.")]
    BusyKey,
    #[error("ERR unknown subcommand '{sub}'. Try {command} HELP.")]
    UnknownSubcommand { command: String, sub: String },
    #[error("ERR Command not allowed inside a transaction: {0}")]
    NotInMulti(&'static str),
    /// Any other `ERR` reply; the text after the code.
    #[error("ERR {0}")]
    Err(Cow<'static, str>),
}

impl Error {
    /// An `ERR` reply with this text (the code is added).
    pub fn err(text: impl Into<Cow<'static, str>>) -> Error {
        Error::Err(text.into())
    }

    /// Redis's error for a bad subcommand of `command`.
    pub fn unknown_subcommand(command: &str, sub: &[u8]) -> Error {
        Error::UnknownSubcommand {
            command: command.to_ascii_uppercase(),
            sub: truncate(&String::from_utf8_lossy(sub)),
        }
    }

    /// The reply text, without allocating for the fixed ones.
    pub fn text(&self) -> Cow<'static, str> {
        match self {
            Error::Syntax => Cow::Borrowed("ERR syntax error"),
            Error::NotInteger => Cow::Borrowed("ERR value is not an integer or out of range"),
            Error::WrongType => {
                Cow::Borrowed("WRONGTYPE Operation against a key holding the wrong kind of value")
            }
            Error::NoAuth => Cow::Borrowed("NOAUTH Authentication required."),
            other => Cow::Owned(other.to_string()),
        }
    }
}

impl From<NotLocked> for Error {
    fn from(_: NotLocked) -> Self {
        Error::err("internal error: command touched a key it did not declare")
    }
}

/// Redis's error for an unknown command (not an [`Error`]: it is written
/// before any command runs).
pub fn unknown_command(args: &[&[u8]]) -> String {
    let name = String::from_utf8_lossy(args.first().copied().unwrap_or_default());
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        truncate(&name)
    );
    for a in args.iter().skip(1).take(16) {
        msg.push('\'');
        msg.push_str(&truncate(&String::from_utf8_lossy(a)));
        msg.push_str("' ");
    }
    msg
}

/// Redis cuts names it echoes back at 128 characters.
fn truncate(s: &str) -> String {
    s.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_redis_codes_and_texts() {
        assert_eq!(Error::Syntax.text(), "ERR syntax error");
        assert_eq!(
            Error::Arity("get".into()).text(),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            Error::unknown_subcommand("client", b"frob").text(),
            "ERR unknown subcommand 'frob'. Try CLIENT HELP."
        );
        assert_eq!(Error::err("no such peer").text(), "ERR no such peer");
        assert!(Error::ExecAbort.text().starts_with("EXECABORT "));
        assert!(Error::Oom.text().starts_with("OOM "));
        // The fast paths agree with Display.
        for e in [
            Error::Syntax,
            Error::NotInteger,
            Error::WrongType,
            Error::NoAuth,
        ] {
            assert_eq!(e.text(), e.to_string());
        }
    }
}
