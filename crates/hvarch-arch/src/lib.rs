//! # hvarch-arch
//!
//! The arch-generic half of hvarch: the Rust form of Kata's `qemuArch` interface and its
//! generic base `qemuArchBase`.
//!
//! * [`arch::QemuArch`]: every operation of the interface as a method whose default delegates
//!   to [`arch::ArchBase`]; a backend (`hvarch-arm64`, `hvarch-amd64`) overrides only what its
//!   architecture does differently.
//! * [`settings::HypervisorConfig`]: the settings the arch layer reads, with Kata's defaults.
//! * [`bridge`]: hotplug bridges, first-free slot allocation and guest PCI paths.
//! * [`resources`]: what a runtime asks to attach (volumes, sockets, vsock, network endpoints,
//!   block drives, vhost-user and VFIO devices, entropy).
//! * [`guest_arch::GuestArch`]: the guest architecture, a run-time value.
//!
//! The arch layer does no I/O beyond reading an image's size or a host fact, and never talks
//! QMP: what must happen over QMP (migration capabilities) is returned as data.
//!
//! ```
//! use hvarch_arch::bridge::{Bridge, BridgeType, Bridges};
//! let mut bridges: Bridges = vec![Bridge::new(BridgeType::Pci, "pci-bridge-0", 2)].into();
//! let slot = bridges.add_device("virtio-blk0", BridgeType::Pci).unwrap();
//! assert_eq!(slot.pci_path().unwrap().to_string(), "02/01");
//! ```
#![deny(missing_docs)]

pub mod arch;
pub mod bridge;
pub mod error;
pub mod guest_arch;
pub mod kernel_params;
pub mod machine;
pub mod resources;
pub mod settings;
#[doc(hidden)]
pub mod testing;

pub use error::{ArchError, Result};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
