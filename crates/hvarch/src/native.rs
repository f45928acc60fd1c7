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
//! | anything else | — (not defined) | — (not defined) | `None` |
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
/// # let _ = native;
/// ```
pub const fn native_arch() -> Option<GuestArch> {
    NATIVE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn native_backend_is_arm64_on_aarch64() {
        use hvarch_arch::arch::QemuArch;
        assert_eq!(NATIVE_ARCH, GuestArch::Aarch64);
        assert_eq!(native_arch(), Some(GuestArch::Aarch64));
        assert_eq!(
            std::any::type_name::<Native>(),
            std::any::type_name::<hvarch_arm64::Arm64>()
        );
        let backend = Native::new(&Default::default()).expect("arm64 backend");
        assert_eq!(backend.guest_arch(), GuestArch::Aarch64);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn native_backend_is_amd64_on_x86_64() {
        use hvarch_arch::arch::QemuArch;
        assert_eq!(NATIVE_ARCH, GuestArch::X86_64);
        assert_eq!(native_arch(), Some(GuestArch::X86_64));
        assert_eq!(
            std::any::type_name::<Native>(),
            std::any::type_name::<hvarch_amd64::Amd64>()
        );
        let backend = Native::new(&Default::default()).expect("amd64 backend");
        assert_eq!(backend.guest_arch(), GuestArch::X86_64);
    }

    #[test]
    fn native_arch_matches_target_arch() {
        match native_arch() {
            Some(arch) => assert_eq!(arch.target_arch(), std::env::consts::ARCH),
            None => assert!(!matches!(std::env::consts::ARCH, "aarch64" | "x86_64")),
        }
    }
}
