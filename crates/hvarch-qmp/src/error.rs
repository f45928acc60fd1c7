//! The one error type of this crate.

use std::time::Duration;

/// A specialised `Result` for QMP operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking QMP.
///
/// No variant is ever produced by a panic: malformed, oversized or unexpected data from the
/// socket becomes [`Error::Protocol`], and the session ends cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading from or writing to the QMP socket failed.
    #[error("QMP I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A command, the greeting or an event did not arrive in time. The connection stays usable.
    #[error("QMP timeout: {what} did not complete within {after:?}")]
    Timeout {
        /// What was being waited for (a command name, "greeting", an event filter).
        what: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection is closed (QEMU exited, the socket was shut down, or `close()` was called).
    #[error("QMP connection closed")]
    Disconnected,
    /// QEMU sent something that breaks the protocol (not JSON, oversize, an error reply without
    /// an id). The session is ended when this is reported for an inbound message.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// QEMU answered a command with an error reply.
    #[error("QMP command `{command}` failed: {class}: {desc}")]
    Command {
        /// The command that failed.
        command: String,
        /// QEMU's error class, e.g. `GenericError`, `CommandNotFound`, `DeviceNotFound`.
        class: String,
        /// QEMU's human-readable description (a placeholder if QEMU sent none).
        desc: String,
    },
    /// The greeting was missing, malformed, or did not arrive.
    #[error("QMP greeting error: {0}")]
    Greeting(String),
    /// `qmp_capabilities` was refused.
    #[error("QMP capabilities negotiation failed: {0}")]
    Negotiation(String),
    /// A command's arguments could not be serialised to JSON, or were not a JSON object.
    #[error("invalid arguments for QMP command `{command}`: {reason}")]
    InvalidArguments {
        /// The command.
        command: String,
        /// Why the arguments were rejected.
        reason: String,
    },
    /// A reply or event was valid JSON but did not match the requested typed (qapi-qmp) shape.
    /// The raw JSON is kept; the connection is unaffected.
    #[error("cannot decode `{what}` as the requested type: {source}; raw JSON: {raw}")]
    Decode {
        /// The command or event whose payload failed to decode.
        what: String,
        /// The raw JSON that was received.
        raw: serde_json::Value,
        /// serde's reason.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The same error again, for each of several receivers (a session that ends fails every
    /// pending command with the error that ended it). `Error` is not `Clone` because of its
    /// I/O and serde sources: those are rebuilt from their kind and message, so the copy
    /// displays exactly as the original.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
            Error::Timeout { what, after } => Error::Timeout {
                what: what.clone(),
                after: *after,
            },
            Error::Disconnected => Error::Disconnected,
            Error::Protocol(m) => Error::Protocol(m.clone()),
            Error::Command {
                command,
                class,
                desc,
            } => Error::Command {
                command: command.clone(),
                class: class.clone(),
                desc: desc.clone(),
            },
            Error::Greeting(m) => Error::Greeting(m.clone()),
            Error::Negotiation(m) => Error::Negotiation(m.clone()),
            Error::InvalidArguments { command, reason } => Error::InvalidArguments {
                command: command.clone(),
                reason: reason.clone(),
            },
            Error::Decode { what, raw, source } => Error::Decode {
                what: what.clone(),
                raw: raw.clone(),
                source: serde::de::Error::custom(source),
            },
        }
    }
}

/// The description used when QEMU's error reply has no `desc`.
pub(crate) const MISSING_DESC: &str = "(QEMU sent no error description)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_displays_as_the_original() {
        let decode = serde_json::from_str::<u32>("\"x\"").expect_err("not a number");
        let all = [
            Error::Io(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
            Error::Timeout {
                what: "command `x`".into(),
                after: Duration::from_millis(5),
            },
            Error::Disconnected,
            Error::Protocol("inbound line is not valid JSON".into()),
            Error::Command {
                command: "device_del".into(),
                class: "DeviceNotFound".into(),
                desc: "no".into(),
            },
            Error::Greeting("g".into()),
            Error::Negotiation("n".into()),
            Error::InvalidArguments {
                command: "c".into(),
                reason: "r".into(),
            },
            Error::Decode {
                what: "w".into(),
                raw: serde_json::json!("x"),
                source: decode,
            },
        ];
        for e in &all {
            let copy = e.duplicate();
            assert_eq!(copy.to_string(), e.to_string());
            assert_eq!(
                std::mem::discriminant(&copy),
                std::mem::discriminant(e),
                "{e}"
            );
        }
    }
}
