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
pub const fn native_arch() -> Option<GuestArch> {
    NATIVE
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the running machine says it is (`uname -m`), asked at run time: under qemu-user
    /// this is the emulated machine, so a test binary built for the wrong target, or a
    /// `cfg_if!` arm naming the wrong backend, shows.
    fn uname_machine() -> String {
        // SAFETY: utsname is plain old data; all-zero is a valid value for uname to fill.
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: uname(2) writes into the struct we own and touches nothing else.
        let rc = unsafe { libc::uname(&mut uts) };
        assert_eq!(rc, 0, "uname: {}", std::io::Error::last_os_error());
        // SAFETY: uname NUL-terminates every field of the struct it filled.
        let machine = unsafe { std::ffi::CStr::from_ptr(uts.machine.as_ptr()) };
        machine.to_string_lossy().into_owned()
    }

    #[test]
    fn native_arch_matches_the_running_machine() {
        let expected = match uname_machine().as_str() {
            "aarch64" => Some(GuestArch::Aarch64),
            "x86_64" => Some(GuestArch::X86_64),
            "ppc64le" => Some(GuestArch::Ppc64le),
            "s390x" => Some(GuestArch::S390x),
            // Big-endian ppc64, 32-bit and other machines have no backend.
            _ => None,
        };
        assert_eq!(native_arch(), expected, "uname -m: {}", uname_machine());
        if let Some(arch) = native_arch() {
            assert_eq!(arch.target_arch(), std::env::consts::ARCH);
        }
    }

    cfg_if::cfg_if! {
        if #[cfg(any(
            target_arch = "aarch64",
            target_arch = "x86_64",
            all(target_arch = "powerpc64", target_endian = "little"),
            target_arch = "s390x",
        ))] {
            #[test]
            fn native_backend_builds_for_the_native_arch() {
                use hvarch_arch::arch::QemuArch;
                assert_eq!(native_arch(), Some(NATIVE_ARCH));
                let backend = Native::new(&Default::default()).expect("native backend");
                assert_eq!(backend.guest_arch(), NATIVE_ARCH);
                let boxed = crate::backend(NATIVE_ARCH, &Default::default()).expect("backend");
                assert_eq!(
                    boxed.machine().expect("machine"),
                    backend.machine().expect("machine")
                );
            }
        }
    }
}
