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

/// The description used when QEMU's error reply has no `desc`.
pub(crate) const MISSING_DESC: &str = "(QEMU sent no error description)";
