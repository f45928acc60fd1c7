//! hvarch-qmp: a QMP (QEMU Machine Protocol) client that never hangs and never panics.
//!
//! * [`protocol`]: a sans-IO core (greeting, negotiation, ids, replies routed by id, events,
//!   line framing with a maximum message size, and flow control: at most 8 commands in flight,
//!   the rest queued, ready commands coalesced into one write). No sockets, no threads.
//! * [`Qmp`]: a blocking client over a Unix socket (callers read for themselves, a timeout on
//!   every wait).
//! * [`AsyncQmp`] (feature `tokio`): the same surface with cancel-safe futures.
//!
//! Both negotiate QMP's `oob` capability when QEMU offers it (as Python's `qemu.qmp` does): QEMU
//! then reads and queues up to 8 commands while it runs one, so concurrent callers gain.
//! [`Config::enable_oob`] `= false` turns it off.
//! * [`commands`]: the govmm command set with exact JSON arguments; any qapi-qmp command struct
//!   can be executed typed with `execute`.
//!
//! Every inbound line is decoded as raw JSON first, so events, fields and enum values that this
//! crate's qapi-qmp (QEMU 9.1 schema) does not know never break the connection; typed decoding
//! happens on demand ([`Event::as_typed`], `execute::<C>`).
//!
//! ```no_run
//! use std::time::Duration;
//! use hvarch_qmp::{commands, Config, Qmp};
//!
//! let qmp = Qmp::connect("/run/vm/qmp.sock", &Config::default())?;
//! println!("QEMU {}", qmp.version());
//! let status = qmp.execute(&qapi_qmp::query_status {})?;
//! println!("running: {}", status.running);
//! qmp.execute_command(&commands::blockdev_add("/dev/loop0", "drive0", false))?;
//! qmp.execute_raw("device_add", serde_json::json!({
//!     "driver": "virtio-blk-pci", "id": "disk0", "drive": "drive0", "bus": "rp0",
//! }))?;
//! qmp.device_del("disk0", Duration::from_secs(10))?; // waits for DEVICE_DELETED
//! qmp.close();
//! # Ok::<(), hvarch_qmp::Error>(())
//! ```
#![deny(missing_docs)]

mod blocking;
mod client;
pub mod codec;
pub mod commands;
mod config;
mod deadline;
mod error;
mod event;
mod fdpass;
mod message;
pub mod protocol;
mod sys;
#[doc(hidden)]
pub mod testing;
#[cfg(feature = "tokio")]
mod tokio;
mod version;

pub use blocking::{EventSubscription, Qmp};
pub use config::{AddFdInfo, Config};
pub use error::{Error, Result};
pub use event::{Event, EventFilter, Timestamp};
pub use fdpass::{recv_with_fds, send_with_fds};
pub use message::{Command, Greeting, Inbound};
pub use version::{ParseVersionError, QemuVersion};

#[cfg(feature = "tokio")]
pub use crate::tokio::{AsyncEventSubscription, AsyncQmp};

pub use qapi_qmp;
pub use qapi_spec;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
