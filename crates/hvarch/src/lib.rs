//! # hvarch
//!
//! The facade of hvarch: describe a VM once ([`VmSpec`]), and get the QEMU command line
//! Kata Containers would build for it on the guest architecture you name — or on the host's
//! own ([`native`]) when you name none.
//!
//! - [`native`]: the host's backend, picked with `cfg_if!` on `target_arch` (the only
//!   compile-time arch choice; every backend builds and is tested on every host).
//! - [`backend`]: an arch backend ([`hvarch_arm64::Arm64`], [`hvarch_amd64::Amd64`],
//!   [`hvarch_ppc64le::Ppc64le`], [`hvarch_s390x::S390x`]) as a `Box<dyn QemuArch>`, chosen
//!   at run time.
//! - [`VmSpec`]: what a user writes (TOML spec files deserialize into it).
//! - [`assemble()`]: Kata's `createSandbox` — machine, CPU, topology, memory, kernel command
//!   line and devices in Kata's order — producing an [`Assembled`] VM: a
//!   [`hvarch_devices::config::VmConfig`], the QEMU binary and the backend.
//! - [`Vm`] ([`vm`]): a running QEMU, launched without polling and always cleaned up, with
//!   its [`hotplug`] flows (plug and unplug with step-by-step rollback), save and restore
//!   ([`lifecycle`]) and the [`shutdown`] ladder.
//! - `AsyncVm` (feature `tokio`): the same VM for tokio code, whose methods are futures that
//!   never block a runtime thread.
//! - [`engine`]: the flows above are sans-IO engines; [`Vm`] and `AsyncVm` are thin drivers
//!   of the same engines (a blocking one and a tokio one).
//! - [`probe`]: what a QEMU binary can do (machine types, devices, objects, accelerators),
//!   asked over QMP; [`probe::check`] refuses a VM the binary cannot run, naming what it
//!   lacks.
//! - [`kata_config`]: Kata's own `configuration.toml` (`[hypervisor.qemu]`) read into a
//!   [`VmSpec`] with Kata's defaults and clamps, and warnings for what hvarch does not honour.
//! - [`virtiofs`]: the virtio-fs daemon (virtiofsd) of each shared directory, started and
//!   supervised with the VM.
//!
//! ```
//! use hvarch::{assemble, GuestArch, Syntax, VmSpec};
//! use hvarch_devices::config::Accelerator;
//!
//! let mut spec = VmSpec::kata_default();
//! spec.arch = Some(GuestArch::Aarch64);
//! spec.hypervisor.accelerator = Accelerator::Tcg;
//! spec.host_memory_mb = Some(16384);
//! spec.host_cpus = Some(8);
//! let vm = assemble(&spec).unwrap();
//! let argv = vm.argv(Syntax::Options).unwrap();
//! assert_eq!(argv[0], "/usr/bin/qemu-system-aarch64");
//! let after = |flag: &str| argv[argv.iter().position(|a| a == flag).unwrap() + 1].clone();
//! assert_eq!(after("-machine"), "virt,accel=tcg,usb=off,gic-version=3");
//! assert_eq!(after("-cpu"), "max");
//! assert_eq!(after("-smp"), "1,sockets=8,cores=1,threads=1,maxcpus=8");
//! assert!(after("-append").ends_with("quiet panic=1 nr_cpus=8 agent.use_vsock=false"));
//! ```
#![deny(missing_docs)]

pub mod assemble;
#[cfg(feature = "tokio")]
pub mod async_vm;
pub mod engine;
pub mod error;
pub mod host;
pub mod hotplug;
pub mod kata_config;
mod launch;
pub mod lifecycle;
pub mod native;
pub mod probe;
pub mod runtime_dir;
pub mod shutdown;
mod spawn;
pub mod spec;
pub mod virtiofs;
pub mod vm;

pub use assemble::{assemble, backend, Assembled, RuntimePaths};
#[cfg(feature = "tokio")]
pub use async_vm::AsyncVm;
pub use error::{Error, Result};
pub use hotplug::{
    HotplugError, HotplugResult, HotplugState, Hotplugger, Location, Placement, Plugged,
};
pub use runtime_dir::RuntimeDirError;
pub use spec::VmSpec;
pub use vm::{EndedBy, LaunchOptions, ShutdownOutcome, Vm, VmError, VmResult};

/// Locks `mutex`, recovering the data if a holder panicked (every critical section in this
/// crate leaves the state it guards consistent).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub use hvarch_arch::arch::QemuArch;
pub use hvarch_arch::guest_arch::GuestArch;
pub use hvarch_arch::settings::HypervisorConfig;
pub use hvarch_devices::argv::Argv;
pub use hvarch_devices::config::Accelerator;
pub use hvarch_devices::part::Syntax;

/// The crates hvarch is built from, for types the facade does not re-export.
pub use {hvarch_amd64, hvarch_arch, hvarch_arm64, hvarch_devices, hvarch_ppc64le, hvarch_s390x};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
