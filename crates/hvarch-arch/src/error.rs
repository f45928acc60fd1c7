//! The arch layer's error type.

use crate::bridge::BridgeType;

/// What can go wrong when the arch layer builds or changes a VM.
///
/// Messages keep Kata's wording where Kata has one, so logs read the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArchError {
    /// The machine type is not one this architecture supports.
    #[error("unrecognised machine type: {machine} (supported: {supported})")]
    UnsupportedMachine {
        /// The requested machine type.
        machine: String,
        /// The supported ones, comma-separated.
        supported: String,
    },
    /// No QEMU binary is known for the machine type, and none was configured.
    #[error("Unknown machine type: {machine}: no QEMU path known for it; set hypervisor_path")]
    NoQemuPath {
        /// The machine type.
        machine: String,
    },
    /// A hotplug was asked for, but the VM has no bridges.
    #[error("failed to get available address from bridges")]
    NoBridges,
    /// Every bridge of the wanted type is full.
    #[error("no more bridge slots available")]
    NoBridgeSlot {
        /// The bridge type that was searched.
        bridge_type: BridgeType,
    },
    /// One bridge is full.
    #[error("Unable to hot plug device on bridge {bridge}: there are no empty slots")]
    BridgeFull {
        /// The bridge.
        bridge: String,
    },
    /// The device is not on the bridge.
    #[error("Unable to hot unplug device {device}: not present on bridge")]
    NotOnBridge {
        /// The device id.
        device: String,
    },
    /// The device already holds a bridge slot: one device, one slot (a device whose removal
    /// QEMU has not confirmed keeps its slot until it is gone).
    #[error("device {device} already holds slot {slot} of bridge {bridge}")]
    DeviceHasSlot {
        /// The device id.
        device: String,
        /// The bridge holding it.
        bridge: String,
        /// Its slot there.
        slot: u32,
    },
    /// A bridge slot asked for by number is outside the bridge or holds another device.
    #[error(
        "Unable to plug device {device} into slot {slot} of bridge {bridge}: taken by {holder}"
    )]
    SlotTaken {
        /// The bridge.
        bridge: String,
        /// The slot.
        slot: u32,
        /// The device that wanted it.
        device: String,
        /// The device holding it (or why the slot does not exist).
        holder: String,
    },
    /// A CCW device number is not `<cssid>.<ssid>.<devno>` in hex.
    #[error("invalid CCW device number {devno:?}: expected <cssid>.<ssid>.<devno> in hex, e.g. fe.0.0001")]
    InvalidDevno {
        /// The device number as given.
        devno: String,
    },
    /// The architecture cannot do what was asked (s390x: vhost-user devices).
    #[error("{reason}")]
    Unsupported {
        /// Kata's message, e.g. "No vhost-user devices supported on s390x".
        reason: String,
    },
    /// A CCW address was asked of a non-CCW bridge.
    #[error("bridge {bridge} is not a CCW bridge")]
    NotCcw {
        /// The bridge.
        bridge: String,
    },
    /// A PCI path was asked of a CCW bridge.
    #[error("bridge {bridge} is not a PCI bridge")]
    NotPci {
        /// The bridge.
        bridge: String,
    },
    /// A guest PCI path with no slots or a slot above 0x1f.
    #[error("invalid PCI path: {path}")]
    InvalidPciPath {
        /// What is wrong.
        path: String,
    },
    /// The machine or architecture has no vIOMMU.
    #[error("{reason}")]
    NoIommu {
        /// Kata's message, e.g. "Arm64 architecture does not support vIOMMU".
        reason: String,
    },
    /// The pflash images are not what the architecture needs.
    #[error("{reason}")]
    Pflash {
        /// Kata's message, e.g. "two pflash images needed for arm64".
        reason: String,
    },
    /// A device the arch layer built was refused by the device model.
    #[error(transparent)]
    Device(#[from] hvarch_devices::Error),
}

/// The result type of the arch layer.
pub type Result<T, E = ArchError> = std::result::Result<T, E>;
