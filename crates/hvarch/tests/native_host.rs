//! `hvarch::native` on the machine the test runs on: the backend `cfg_if!` picks must be the
//! one for the running machine.
//!
//! An integration test of its own (not a unit test of `native`) so that the cross targets
//! that do not run the facade's unit tests can still run it cheaply: under qemu-user,
//! `uname -m` reports the emulated machine, so a test binary built for the wrong target, or a
//! `cfg_if!` arm naming the wrong backend, fails here.

use hvarch::native::native_arch;
use hvarch::GuestArch;

/// What the running machine says it is (`uname -m`), asked at run time.
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
            use hvarch::native::{Native, NATIVE_ARCH};
            use hvarch::QemuArch;
            assert_eq!(native_arch(), Some(NATIVE_ARCH));
            let backend = Native::new(&Default::default()).expect("native backend");
            assert_eq!(backend.guest_arch(), NATIVE_ARCH);
            let boxed = hvarch::backend(NATIVE_ARCH, &Default::default()).expect("backend");
            assert_eq!(
                boxed.machine().expect("machine"),
                backend.machine().expect("machine")
            );
        }
    }
}
