//! The error type of the device model.

use std::fmt::Display;

/// Everything that can be wrong with a device, a backend or a VM configuration.
///
/// Every variant names the item (`what`, e.g. `"virtio-blk"` or `"machine"`) and the field at
/// fault, so a message read in a log points straight at the configuration line to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An identifier (device id, node name, chardev id, …) does not follow QEMU's rules:
    /// it must start with a letter and contain only letters, digits, `-`, `.` and `_`.
    #[error("{what}: invalid {field} {value:?}: {reason}")]
    InvalidId {
        /// The device or section holding the id.
        what: &'static str,
        /// The field holding the id.
        field: &'static str,
        /// The offending id.
        value: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A field that must be set is empty or absent.
    #[error("{what}: `{field}` is required")]
    MissingField {
        /// The device or section.
        what: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A field has a value QEMU would refuse or misread.
    #[error("{what}: invalid `{field}` {value:?}: {reason}")]
    InvalidValue {
        /// The device or section.
        what: &'static str,
        /// The field at fault.
        field: &'static str,
        /// The offending value, as text.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// Two fields that exclude each other are both set.
    #[error("{what}: `{field}` cannot be combined with `{other}`")]
    Conflict {
        /// The device or section.
        what: &'static str,
        /// One field.
        field: &'static str,
        /// The field it conflicts with.
        other: &'static str,
    },
    /// A value holds a NUL byte, which cannot be passed in a command-line argument.
    #[error("{what}: `{field}` contains a NUL byte")]
    NulByte {
        /// The option or device.
        what: String,
        /// The key whose value holds the NUL.
        field: String,
    },
    /// A path is not valid UTF-8 (QEMU options and QMP are text).
    #[error("{what}: `{field}` path {path:?} is not valid UTF-8")]
    NonUtf8Path {
        /// The device or section.
        what: &'static str,
        /// The path field.
        field: &'static str,
        /// The path, lossily converted.
        path: String,
    },
    /// A part of a device has no QMP equivalent (e.g. `-drive` or `-fsdev`), so the device
    /// can only be cold-plugged.
    #[error("{what}: `{option}` cannot be hot-plugged over QMP; cold-plug it instead")]
    NotHotpluggable {
        /// The device.
        what: String,
        /// The command-line option without a QMP counterpart.
        option: &'static str,
    },
    /// A file descriptor cannot be used where it was given.
    #[error("file descriptor {fd}: {reason}")]
    FileDescriptor {
        /// The descriptor (number or name).
        fd: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
}

impl Error {
    /// The field (or, for [`Error::NulByte`], the property) at fault, when the error is
    /// about one field: what a caller highlights in a configuration.
    ///
    /// ```
    /// use hvarch_devices::id::check_id;
    /// let err = check_id("virtio-blk", "bus", "a,b").unwrap_err();
    /// assert_eq!(err.field(), Some("bus"));
    /// ```
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::InvalidId { field, .. }
            | Error::MissingField { field, .. }
            | Error::InvalidValue { field, .. }
            | Error::Conflict { field, .. }
            | Error::NonUtf8Path { field, .. } => Some(field),
            Error::NulByte { field, .. } => Some(field),
            Error::NotHotpluggable { .. } | Error::FileDescriptor { .. } => None,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for [`Error::InvalidValue`].
pub(crate) fn invalid(
    what: &'static str,
    field: &'static str,
    value: impl Display,
    reason: impl Into<String>,
) -> Error {
    Error::InvalidValue {
        what,
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}
