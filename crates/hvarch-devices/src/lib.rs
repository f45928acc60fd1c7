//! # hvarch-devices
//!
//! QEMU's devices and backends as typed values. Each device is defined once and rendered
//! three ways: to QEMU's option syntax (`-device virtio-blk-pci,drive=…`, commas in values
//! doubled so no value can inject an option), to QEMU's JSON argument syntax, and to the QMP
//! commands that hot-plug it (`device_add`, `blockdev-add`, `netdev_add`, `object-add`,
//! `chardev-add`) and unplug it.
//!
//! This is the Rust form of govmm's device model (the `qemu` package Kata Containers' Go
//! runtime uses), in modern QEMU syntax (QEMU ≥ 7.2), with validation that names the field at
//! fault instead of silently dropping a device.
//!
//! ```
//! use hvarch_devices::block::{BlockBackend, BlockDevice, BlockProtocol};
//! use hvarch_devices::fd::NoFds;
//! use hvarch_devices::part::Syntax;
//! use hvarch_devices::QemuDevice;
//!
//! let disk = BlockDevice::new(
//!     "disk0",
//!     BlockBackend::new("disk0-node", BlockProtocol::File { filename: "/images/a,b.img".into() }),
//! );
//! let parts = disk.parts().unwrap();
//! // Cold plug: command-line arguments.
//! assert_eq!(
//!     parts[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
//!     ["-blockdev", "driver=raw,node-name=disk0-node,file.driver=file,file.filename=/images/a,,b.img"],
//! );
//! // Hot plug: the same parts as QMP commands, in order.
//! let calls: Vec<_> = parts.iter().map(|p| p.qmp_add(&mut NoFds).unwrap().command).collect();
//! assert_eq!(calls, ["blockdev-add", "device_add"]);
//! ```
#![deny(missing_docs)]

pub mod argv;
pub mod balloon;
pub mod block;
pub mod bridge;
pub mod chardev;
pub mod config;
pub mod cpu;
pub mod device;
pub mod error;
pub mod fd;
pub mod fs9p;
pub mod fw_cfg;
pub mod id;
pub mod iommu;
pub mod iothread;
pub mod kernel_params;
pub mod loader;
pub mod memory;
pub mod net;
pub mod part;
pub mod pci;
pub mod props;
pub mod pvpanic;
pub mod rng;
pub mod scsi;
pub mod syntax;
#[cfg(test)]
mod test_support;
pub mod transport;
pub mod vfio;
pub mod vhost_user;
pub mod vsock;

pub use device::{Device, QemuDevice};
pub use error::{Error, Result};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
