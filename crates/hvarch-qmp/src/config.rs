//! Client configuration shared by the blocking and async clients.

use std::time::Duration;

use serde::Deserialize;

use crate::codec::DEFAULT_MAX_MESSAGE_SIZE;

/// How a client behaves. `Config::default()` suits most uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Default timeout for every command (default 30 s); `execute_with_timeout` overrides it.
    /// It also bounds a blocked socket write.
    pub command_timeout: Duration,
    /// Timeout for the greeting and `qmp_capabilities` together (default 10 s).
    pub greeting_timeout: Duration,
    /// Maximum size of one inbound message in bytes (default 16 MiB). A longer line ends the
    /// session with [`Error::Protocol`](crate::Error::Protocol).
    pub max_message_size: usize,
    /// Negotiate the `oob` capability when the server offers it (default on, as Python's
    /// `qemu.qmp` does). With it QEMU reads and queues up to 8 in-band commands while it runs
    /// one, so concurrent commands no longer wait for a main-loop wake-up each; replies,
    /// events, errors and fd passing behave the same. `false` negotiates no capability.
    pub enable_oob: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            command_timeout: Duration::from_secs(30),
            greeting_timeout: Duration::from_secs(10),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            enable_oob: true,
        }
    }
}

/// The reply of `add-fd`: which fd set the descriptor joined and its number inside QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct AddFdInfo {
    /// The fd set id (use `/dev/fdset/<id>` as a file name in later commands).
    #[serde(rename = "fdset-id")]
    pub fdset_id: u64,
    /// The descriptor's number in QEMU.
    pub fd: i64,
}
