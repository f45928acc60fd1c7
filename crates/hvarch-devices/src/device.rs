//! The [`QemuDevice`] trait every device implements, and [`Device`], the enum of all of them
//! (what a VM configuration holds and what a spec file names with `type = "…"`).

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::part::Part;
use crate::transport::VirtioOpts;

/// A device or backend that QEMU creates from one or more [`Part`]s.
///
/// One definition serves cold plug (render the parts to arguments) and hot plug (send each
/// part's [`Part::qmp_add`] in order; remove with [`Part::qmp_del`] in reverse order).
/// A device implements [`for_each_part`](Self::for_each_part); its parts borrow its fields,
/// so rendering one copies nothing.
pub trait QemuDevice {
    /// A short name for errors and logs, e.g. `"virtio-blk"`.
    fn kind(&self) -> &'static str;

    /// The id of the guest-visible frontend (what `device_del` takes), if it has one.
    fn id(&self) -> Option<&str>;

    /// Checks every field; the error names the first field at fault.
    fn validate(&self) -> Result<()>;

    /// Hands each part to `emit`, in creation order (backends before the frontend that uses
    /// them), and stops at the first error. Validates first, so a device that renders is a
    /// device QEMU can take.
    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()>;

    /// The parts in creation order (see [`for_each_part`](Self::for_each_part)).
    fn parts(&self) -> Result<Vec<Part<'_>>> {
        let mut parts = Vec::with_capacity(2);
        self.for_each_part(&mut |part| {
            parts.push(part);
            Ok(())
        })?;
        Ok(parts)
    }
}

macro_rules! device_enum {
    ($( $(#[$doc:meta])* $variant:ident($ty:ty) = $tag:literal, )*) => {
        /// Every device and backend of the model, tagged by `type` in spec files.
        ///
        /// ```
        /// use hvarch_devices::{Device, QemuDevice};
        /// let device: Device = serde_json::from_str(r#"{"type": "block", "id": "disk0",
        ///     "backend": {"node_name": "n0", "protocol": {"driver": "null-co", "size": 1048576}}}"#,
        /// ).unwrap();
        /// assert_eq!(device.kind(), "virtio-blk");
        /// assert_eq!(device.id(), Some("disk0"));
        /// ```
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", rename_all = "kebab-case")]
        #[non_exhaustive]
        pub enum Device {
            $( $(#[$doc])* #[serde(rename = $tag)] $variant($ty), )*
        }

        impl QemuDevice for Device {
            fn kind(&self) -> &'static str {
                match self { $( Device::$variant(d) => d.kind(), )* }
            }
            fn id(&self) -> Option<&str> {
                match self { $( Device::$variant(d) => d.id(), )* }
            }
            fn validate(&self) -> Result<()> {
                match self { $( Device::$variant(d) => d.validate(), )* }
            }
            fn for_each_part<'a>(
                &'a self,
                emit: &mut dyn FnMut(Part<'a>) -> Result<()>,
            ) -> Result<()> {
                match self { $( Device::$variant(d) => d.for_each_part(emit), )* }
            }
        }

        $(
            impl From<$ty> for Device {
                fn from(d: $ty) -> Self {
                    Device::$variant(d)
                }
            }
        )*
    };
}

// One line per device type. Keep the list grouped as the modules are.
device_enum! {
    /// A virtio-blk disk on a `-blockdev` node.
    Block(crate::block::BlockDevice) = "block",
    /// A virtio-9p share of a host directory (`-fsdev` + `virtio-9p-pci`); cold plug only.
    Fs9p(crate::fs9p::FsDevice) = "9p",
    /// A virtio-serial controller (`virtio-serial-pci`), the bus of console and serial ports.
    SerialController(crate::chardev::SerialController) = "serial-controller",
    /// A `virtconsole` or `virtserialport` on its own `-chardev`.
    CharDevice(crate::chardev::CharDevice) = "char-device",
    /// A legacy serial port (`-serial chardev:<id>`) on its own `-chardev`; cold plug only.
    LegacySerial(crate::chardev::LegacySerial) = "legacy-serial",
    /// A PCI bridge (`pci-bridge` or `pcie-pci-bridge`).
    PciBridge(crate::bridge::PciBridge) = "pci-bridge",
    /// A PCI Express root port (`pcie-root-port`).
    PcieRootPort(crate::bridge::PcieRootPort) = "pcie-root-port",
    /// A vhost-vsock device (`vhost-vsock-pci`).
    Vsock(crate::vsock::VsockDevice) = "vsock",
    /// A virtio-rng device on its own `rng-random` object.
    Rng(crate::rng::RngDevice) = "rng",
    /// A virtio-balloon device.
    Balloon(crate::balloon::BalloonDevice) = "balloon",
    /// A virtio-scsi controller.
    ScsiController(crate::scsi::ScsiController) = "scsi-controller",
    /// A SCSI disk or CD-ROM (`scsi-hd` / `scsi-cd`) on a `-blockdev` node.
    ScsiDisk(crate::scsi::ScsiDisk) = "scsi-disk",
    /// A virtio-net NIC on a tap, macvtap or user-mode `-netdev`.
    Net(crate::net::NetDevice) = "net",
    /// A vhost-user net, SCSI, block or fs device on a client socket chardev.
    VhostUser(crate::vhost_user::VhostUserDevice) = "vhost-user",
    /// An assigned host device (`vfio-pci`, `vfio-ccw`, `vfio-ap`).
    Vfio(crate::vfio::VfioDevice) = "vfio",
    /// An emulated Intel IOMMU (`intel-iommu`, q35); cold plug only.
    IntelIommu(crate::iommu::IntelIommu) = "intel-iommu",
    /// A virtio IOMMU (`virtio-iommu-pci`); cold plug only.
    VirtioIommu(crate::iommu::VirtioIommu) = "virtio-iommu",
    /// A host memory backend alone (`-object memory-backend-*`), e.g. the VM's main memory.
    MemoryBackend(crate::memory::MemoryBackend) = "memory-backend",
    /// An NVDIMM, DIMM or virtio-mem device on its own memory backend.
    MemoryDevice(crate::memory::MemoryDevice) = "memory-device",
    /// A paravirtual panic device (`pvpanic` ISA or `pvpanic-pci`).
    PvPanic(crate::pvpanic::PvPanic) = "pvpanic",
    /// A generic loader (`-device loader`) putting a file in guest memory; cold plug only.
    Loader(crate::loader::Loader) = "loader",
    /// An I/O thread (`-object iothread`).
    IoThread(crate::iothread::IoThread) = "iothread",
    /// A hot-pluggable vCPU (`device_add host-x86_64-cpu`, …).
    Cpu(crate::cpu::CpuDevice) = "cpu",
    /// A fw_cfg item (`-fw_cfg name=…,file=…|string=…`); cold plug only.
    FwCfg(crate::fw_cfg::FwCfg) = "fw-cfg",
}

impl Device {
    /// The virtio transport settings of a virtio device (`None` for devices that are not
    /// virtio: bridges, root ports, memory, vCPUs, …).
    pub fn virtio(&self) -> Option<&VirtioOpts> {
        match self {
            Device::Block(d) => Some(&d.virtio),
            Device::Fs9p(d) => Some(&d.virtio),
            Device::SerialController(d) => Some(&d.virtio),
            Device::Vsock(d) => Some(&d.virtio),
            Device::Rng(d) => Some(&d.virtio),
            Device::Balloon(d) => Some(&d.virtio),
            Device::ScsiController(d) => Some(&d.virtio),
            Device::Net(d) => Some(&d.virtio),
            Device::VhostUser(d) => Some(&d.virtio),
            Device::VirtioIommu(d) => Some(&d.virtio),
            _ => None,
        }
    }

    /// The virtio transport settings, mutable (to give a CCW device its `devno`).
    pub fn virtio_mut(&mut self) -> Option<&mut VirtioOpts> {
        match self {
            Device::Block(d) => Some(&mut d.virtio),
            Device::Fs9p(d) => Some(&mut d.virtio),
            Device::SerialController(d) => Some(&mut d.virtio),
            Device::Vsock(d) => Some(&mut d.virtio),
            Device::Rng(d) => Some(&mut d.virtio),
            Device::Balloon(d) => Some(&mut d.virtio),
            Device::ScsiController(d) => Some(&mut d.virtio),
            Device::Net(d) => Some(&mut d.virtio),
            Device::VhostUser(d) => Some(&mut d.virtio),
            Device::VirtioIommu(d) => Some(&mut d.virtio),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Transport;

    #[test]
    fn virtio_settings_of_virtio_devices_only() {
        let mut rng: Device = crate::rng::RngDevice::new("rng0", "rng0-obj").into();
        assert_eq!(rng.virtio().map(|v| v.transport), Some(Transport::Pci));
        let opts = rng.virtio_mut().expect("rng is virtio");
        opts.transport = Transport::Ccw;
        opts.devno = Some("fe.0.0007".into());
        assert_eq!(
            rng.virtio().and_then(|v| v.devno.as_deref()),
            Some("fe.0.0007")
        );
        let mut port: Device = crate::bridge::PcieRootPort::new("rp0").into();
        assert!(port.virtio().is_none());
        assert!(port.virtio_mut().is_none());
    }
}
