//! File descriptors a device needs (tap queues, vhost, vsock) and how they reach QEMU.
//!
//! A device holds an [`FdArg`]: either a descriptor it owns ([`SharedFd`]) or the name of one
//! QEMU already holds (passed earlier with QMP `getfd`/`add-fd`). Rendering resolves each
//! [`FdArg`] through an [`FdResolver`]:
//!
//! * for the command line, an [`FdTable`] assigns the child's descriptor numbers (3, 4, …, like
//!   a launcher's inherited fds) and keeps the descriptors until the launcher maps them;
//! * for hotplug, a [`QmpFdNames`] gives each owned descriptor a name that the caller sends with
//!   `getfd` before issuing the command.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// An owned file descriptor that can be shared between configuration copies.
///
/// Cloning shares the same descriptor; it is closed when the last clone is dropped.
#[derive(Clone)]
pub struct SharedFd(Arc<OwnedFd>);

impl SharedFd {
    /// Takes ownership of `fd`.
    pub fn new(fd: OwnedFd) -> Self {
        SharedFd(Arc::new(fd))
    }

    /// Whether both values share one descriptor.
    pub fn same(&self, other: &SharedFd) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl From<OwnedFd> for SharedFd {
    fn from(fd: OwnedFd) -> Self {
        SharedFd::new(fd)
    }
}

impl AsFd for SharedFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl fmt::Debug for SharedFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedFd({})", self.0.as_raw_fd())
    }
}

impl PartialEq for SharedFd {
    fn eq(&self, other: &Self) -> bool {
        self.same(other)
    }
}

/// A file descriptor argument of a device.
#[derive(Clone, Debug, PartialEq)]
pub enum FdArg {
    /// A descriptor owned by this configuration, handed to QEMU at launch or with `getfd`.
    Owned(SharedFd),
    /// The name of a descriptor QEMU already holds (from QMP `getfd`). Hotplug only.
    Named(String),
}

impl From<OwnedFd> for FdArg {
    fn from(fd: OwnedFd) -> Self {
        FdArg::Owned(SharedFd::new(fd))
    }
}

impl Serialize for FdArg {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            FdArg::Named(name) => serializer.serialize_str(name),
            FdArg::Owned(_) => Err(serde::ser::Error::custom(
                "an owned file descriptor cannot be serialized; refer to it by name instead",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for FdArg {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer).map(FdArg::Named)
    }
}

/// Turns an [`FdArg`] into the text QEMU expects in its place.
pub trait FdResolver {
    /// The value to write for `fd`.
    fn resolve(&mut self, fd: &FdArg) -> Result<String>;
}

/// The descriptors a QEMU child inherits, numbered from `first` (3 by default).
///
/// ```
/// use hvarch_devices::fd::{FdArg, FdResolver, FdTable};
/// let mut table = FdTable::new();
/// let fd = FdArg::from(std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
/// assert_eq!(table.resolve(&fd).unwrap(), "3");
/// assert_eq!(table.resolve(&fd).unwrap(), "3"); // the same descriptor keeps its number
/// assert_eq!(table.len(), 1);
/// ```
#[derive(Debug)]
pub struct FdTable {
    first: i32,
    fds: Vec<SharedFd>,
}

impl Default for FdTable {
    fn default() -> Self {
        FdTable::new()
    }
}

impl FdTable {
    /// An empty table whose first descriptor is number 3.
    pub fn new() -> Self {
        FdTable::starting_at(3)
    }

    /// An empty table whose first descriptor is number `first`.
    pub fn starting_at(first: i32) -> Self {
        FdTable {
            first,
            fds: Vec::new(),
        }
    }

    /// Adds `fd` (once) and returns its number in the child.
    pub fn insert(&mut self, fd: &SharedFd) -> i32 {
        let index = match self.fds.iter().position(|f| f.same(fd)) {
            Some(i) => i,
            None => {
                self.fds.push(fd.clone());
                self.fds.len() - 1
            }
        };
        // The table never holds anywhere near i32::MAX descriptors.
        self.first + i32::try_from(index).unwrap_or(i32::MAX - self.first)
    }

    /// The number of descriptors.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether no descriptor was added.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Each descriptor with the number it must have in the child, in order.
    pub fn mappings(&self) -> impl Iterator<Item = (i32, &SharedFd)> {
        (self.first..).zip(self.fds.iter())
    }
}

impl FdResolver for FdTable {
    fn resolve(&mut self, fd: &FdArg) -> Result<String> {
        match fd {
            FdArg::Owned(fd) => Ok(self.insert(fd).to_string()),
            FdArg::Named(name) => Err(Error::FileDescriptor {
                fd: name.clone(),
                reason: "a named descriptor exists only inside a running QEMU; \
                         on the command line give the descriptor itself",
            }),
        }
    }
}

/// Names for owned descriptors used in a QMP command: each must first be sent with `getfd`.
#[derive(Debug, Default)]
pub struct QmpFdNames {
    prefix: String,
    pending: Vec<(String, SharedFd)>,
}

impl QmpFdNames {
    /// Names will be `<prefix>0`, `<prefix>1`, … (choose a prefix unique per hotplug).
    pub fn new(prefix: impl Into<String>) -> Self {
        QmpFdNames {
            prefix: prefix.into(),
            pending: Vec::new(),
        }
    }

    /// The descriptors to send with `getfd`, each with its name, in order.
    pub fn pending(&self) -> &[(String, SharedFd)] {
        &self.pending
    }
}

impl FdResolver for QmpFdNames {
    fn resolve(&mut self, fd: &FdArg) -> Result<String> {
        match fd {
            FdArg::Named(name) => {
                crate::id::check_id("fd", "name", name)?;
                Ok(name.clone())
            }
            FdArg::Owned(fd) => {
                if let Some((name, _)) = self.pending.iter().find(|(_, f)| f.same(fd)) {
                    return Ok(name.clone());
                }
                let name = format!("{}{}", self.prefix, self.pending.len());
                self.pending.push((name.clone(), fd.clone()));
                Ok(name)
            }
        }
    }
}

/// A resolver for renderings that must not contain descriptors (e.g. tests, display).
/// Owned descriptors render as their raw number in this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFds;

impl FdResolver for NoFds {
    fn resolve(&mut self, fd: &FdArg) -> Result<String> {
        match fd {
            FdArg::Named(name) => Ok(name.clone()),
            FdArg::Owned(fd) => Ok(fd.as_fd().as_raw_fd().to_string()),
        }
    }
}
