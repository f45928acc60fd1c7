//! The host's own guest architecture: the only place `cfg(target_arch)` picks a backend.
//!
//! Every backend compiles on every host (a QEMU command line depends on the guest, not the
//! host), so this module only names the *default*: what `arch` means when a spec leaves it
//! out.
//!
//! | host `target_arch` | [`Native`] | [`NATIVE_ARCH`] | [`native_arch()`] |
//! |---|---|---|---|
//! | `aarch64` | [`hvarch_arm64::Arm64`] | [`GuestArch::Aarch64`] | `Some(Aarch64)` |
//! | `x86_64` | [`hvarch_amd64::Amd64`] | [`GuestArch::X86_64`] | `Some(X86_64)` |
//! | `powerpc64`, little endian | [`hvarch_ppc64le::Ppc64le`] | [`GuestArch::Ppc64le`] | `Some(Ppc64le)` |
//! | `s390x` | [`hvarch_s390x::S390x`] | [`GuestArch::S390x`] | `Some(S390x)` |
//! | anything else (big-endian `powerpc64` too) | — (not defined) | — (not defined) | `None` |
//!
//! On other hosts `Native` and `NATIVE_ARCH` do not exist, so code that needs a native
//! backend fails to compile there instead of silently picking one; portable code calls
//! [`native_arch()`] and handles `None` (the spec must then name its `arch`).

use hvarch_arch::guest_arch::GuestArch;

cfg_if::cfg_if! {
    if #[cfg(target_arch = "aarch64")] {
        /// The host's backend: arm64.
        pub type Native = hvarch_arm64::Arm64;
        /// The host's guest architecture: aarch64.
        pub const NATIVE_ARCH: GuestArch = GuestArch::Aarch64;
        const NATIVE: Option<GuestArch> = Some(NATIVE_ARCH);
    } else if #[cfg(target_arch = "x86_64")] {
        /// The host's backend: x86_64.
        pub type Native = hvarch_amd64::Amd64;
        /// The host's guest architecture: x86_64.
        pub const NATIVE_ARCH: GuestArch = GuestArch::X86_64;
        const NATIVE: Option<GuestArch> = Some(NATIVE_ARCH);
    } else if #[cfg(all(target_arch = "powerpc64", target_endian = "little"))] {
        /// The host's backend: ppc64le.
        pub type Native = hvarch_ppc64le::Ppc64le;
        /// The host's guest architecture: ppc64le.
        pub const NATIVE_ARCH: GuestArch = GuestArch::Ppc64le;
        const NATIVE: Option<GuestArch> = Some(NATIVE_ARCH);
    } else if #[cfg(target_arch = "s390x")] {
        /// The host's backend: s390x.
        pub type Native = hvarch_s390x::S390x;
        /// The host's guest architecture: s390x.
        pub const NATIVE_ARCH: GuestArch = GuestArch::S390x;
        const NATIVE: Option<GuestArch> = Some(NATIVE_ARCH);
    } else {
        // No backend runs natively on this host: guests must name their architecture.
        const NATIVE: Option<GuestArch> = None;
    }
}

/// The guest architecture matching the host, if hvarch has a backend for it.
///
/// ```
/// let native = hvarch::native::native_arch();
/// #[cfg(target_arch = "x86_64")]
/// assert_eq!(native, Some(hvarch::GuestArch::X86_64));
/// #[cfg(target_arch = "aarch64")]
/// assert_eq!(native, Some(hvarch::GuestArch::Aarch64));
/// #[cfg(target_arch = "s390x")]
/// assert_eq!(native, Some(hvarch::GuestArch::S390x));
/// # let _ = native;
/// ```
///
/// `tests/native_host.rs` checks this against the running machine, on every host CI runs on
/// (x86_64 natively; aarch64, ppc64le and s390x under qemu-user).
pub const fn native_arch() -> Option<GuestArch> {
    NATIVE
}
