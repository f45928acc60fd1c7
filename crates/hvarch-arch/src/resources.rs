//! What a runtime asks the arch layer to attach (Kata's `types.Volume`, `types.Socket`,
//! `types.VSock`, network endpoints, `config.BlockDrive`, vhost-user and VFIO device info,
//! `config.RNGDev`). The arch layer turns each into devices.

use std::path::PathBuf;

use hvarch_devices::fd::{FdArg, SharedFd};
use serde::{Deserialize, Serialize};

/// A host directory shared over 9p (or virtio-fs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// The tag the guest mounts.
    pub mount_tag: String,
    /// The host directory.
    pub host_path: PathBuf,
}

/// A virtio-serial port backed by a Unix socket (Kata's agent channel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Socket {
    /// The port device's id (`channel0`).
    pub device_id: String,
    /// The chardev's id (`charch0`).
    pub id: String,
    /// The host socket QEMU listens on.
    pub host_path: PathBuf,
    /// The port name the guest sees (`agent.channel.0`).
    pub name: String,
}

/// A vhost-vsock device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VSock {
    /// The guest's context id (3..=u32::MAX).
    pub context_id: u32,
    /// An opened `/dev/vhost-vsock`, if the caller holds one.
    #[serde(default)]
    pub vhost_fd: Option<FdArg>,
}

/// How a network endpoint reaches the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointKind {
    /// A veth pair bridged to a tap (Kata's default).
    Veth,
    /// A bridged macvlan.
    BridgedMacvlan,
    /// An ipvlan.
    Ipvlan,
    /// A macvtap device.
    Macvtap,
    /// A tap device.
    Tuntap,
    /// Anything else: the arch layer refuses it.
    Other,
}

/// How veth-like endpoints are wired to the VM (Kata's `NetInterworkingModel`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InterworkingModel {
    /// A tap with tc redirect (Kata's default).
    #[default]
    TcFilter,
    /// A macvtap.
    Macvtap,
}

/// A network endpoint to attach.
#[derive(Clone, Debug, PartialEq)]
pub struct NetEndpoint {
    /// The endpoint kind.
    pub kind: EndpointKind,
    /// The interworking model for veth-like kinds.
    pub interworking: InterworkingModel,
    /// The host interface (tap/macvtap) name.
    pub ifname: String,
    /// The guest MAC address.
    pub mac: String,
    /// Opened tap queues (one per queue); empty to open by `ifname`.
    pub vm_fds: Vec<SharedFd>,
    /// Opened `/dev/vhost-net` descriptors, one per queue.
    pub vhost_fds: Vec<SharedFd>,
}

/// A block device to attach (Kata's `config.BlockDrive`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDrive {
    /// The image or host device.
    pub file: PathBuf,
    /// `raw` or `qcow2`.
    pub format: String,
    /// The drive id.
    pub id: String,
    /// Attach read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Let other users write the image too.
    #[serde(default)]
    pub share_rw: bool,
    /// The drive index (SCSI id and LUN are derived from it: `index / 256`, `index % 256`).
    #[serde(default)]
    pub index: u32,
}

/// The kind of a vhost-user device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VhostUserKind {
    /// virtio-net.
    Net,
    /// virtio-scsi.
    Scsi,
    /// virtio-blk.
    Blk,
    /// virtio-fs.
    Fs,
}

/// A vhost-user device to attach (Kata's `VhostUserDeviceAttrs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserDevice {
    /// The kind.
    pub kind: VhostUserKind,
    /// The backend daemon's socket.
    pub socket_path: PathBuf,
    /// The device id (`char-<id>` is the chardev).
    pub dev_id: String,
    /// Net: the MAC address.
    #[serde(default)]
    pub mac: Option<String>,
    /// Fs: the mount tag.
    #[serde(default)]
    pub tag: Option<String>,
}

/// A host PCI device to pass through (Kata's `config.VFIODev`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfioDev {
    /// The device id.
    pub id: String,
    /// The host address (`0000:02:00.0`).
    pub bdf: String,
    /// Vendor id override.
    #[serde(default)]
    pub vendor_id: Option<u16>,
    /// Device id override.
    #[serde(default)]
    pub device_id: Option<u16>,
    /// The bus (a root port such as `rp0`), when set by the caller.
    #[serde(default)]
    pub bus: Option<String>,
}

/// An entropy device (Kata's `config.RNGDev`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngDev {
    /// The rng object's id (`rng0`).
    pub id: String,
    /// The host entropy source.
    pub filename: PathBuf,
}
