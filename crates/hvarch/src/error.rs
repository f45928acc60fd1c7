//! The facade's error type: spec problems, and the arch and device errors met while
//! assembling a VM, each naming the spec field at fault.

use std::path::PathBuf;

use hvarch_arch::guest_arch::GuestArch;
use hvarch_arch::ArchError;

/// What can go wrong when choosing a backend or assembling a VM from a [`crate::VmSpec`].
///
/// Field names are spec paths as written in a spec file, e.g. `hypervisor.num_vcpus`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// hvarch has no backend for this guest architecture yet.
    #[error(
        "`arch`: no backend for guest architecture {arch} yet (available: aarch64, x86_64, \
         ppc64le, s390x)"
    )]
    NoBackend {
        /// The architecture asked for.
        arch: GuestArch,
    },
    /// The spec names no `arch` and the host has no native backend.
    #[error("`arch`: not set, and this host ({host}) has no native backend; set `arch`")]
    NoNativeArch {
        /// The host's `target_arch`.
        host: &'static str,
    },
    /// A required field is absent.
    #[error("`{field}` is required: {reason}")]
    Missing {
        /// The spec field.
        field: &'static str,
        /// Why it is needed.
        reason: &'static str,
    },
    /// A field has a value hvarch refuses.
    #[error("`{field}`: invalid value {value:?}: {reason}")]
    Invalid {
        /// The spec field.
        field: &'static str,
        /// The offending value, as text.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// Two fields exclude each other.
    #[error("`{field}` cannot be combined with `{other}`")]
    Conflict {
        /// One field.
        field: &'static str,
        /// The field it conflicts with.
        other: &'static str,
    },
    /// The arch backend refused a step; `field` is the spec field that step comes from.
    #[error("`{field}`: {source}")]
    Arch {
        /// The spec field behind the failing step.
        field: &'static str,
        /// The backend's error.
        #[source]
        source: ArchError,
    },
    /// The device model refused the assembled VM or one of its devices.
    #[error("{context}: {source}")]
    Device {
        /// The spec field or assembly step.
        context: &'static str,
        /// The device model's error (naming its own field).
        #[source]
        source: hvarch_devices::Error,
    },
    /// Whether the host is itself a VM could not be read (x86_64 hosts, KVM guests).
    #[error("cannot read {path} to tell whether this host is a VM: {reason}; set `host_nested`")]
    HostCpuInfo {
        /// The file read.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The host's memory size could not be read.
    #[error("cannot read the host memory size from {path}: {reason}; set `host_memory_mb`")]
    HostMemory {
        /// The file read.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl Error {
    /// Wraps an arch error met while handling spec field `field`.
    pub(crate) fn arch(field: &'static str) -> impl FnOnce(ArchError) -> Error {
        move |source| Error::Arch { field, source }
    }

    /// Wraps a device error met while handling `context`.
    pub(crate) fn device(context: &'static str) -> impl FnOnce(hvarch_devices::Error) -> Error {
        move |source| Error::Device { context, source }
    }

    /// Shorthand for [`Error::Invalid`].
    pub(crate) fn invalid(
        field: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Error {
        Error::Invalid {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// The result type of the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;
