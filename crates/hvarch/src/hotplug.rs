//! Hot plug and unplug over QMP (Kata's `qemu.go` hotplug flows, kata-go.md §4.5), with one
//! generic engine for every device and a step-by-step rollback.
//!
//! # The engine
//!
//! A device of the model renders to [`Part`]s in creation order (backends first). The same
//! parts that make its command-line arguments make its QMP commands, so one engine plugs any
//! device ([`Hotplugger::plug`]):
//!
//! 1. **placement**: a free cold-plugged PCIe root port (`bus` = the port, path
//!    `<port slot>/00` from `query-pci`), a bridge slot (`bus` = the bridge, `addr` = the
//!    slot, path `<bridge slot>/<slot>`), the root bus, or the device as given
//!    ([`Placement`]). A virtio-ccw device (s390x) always takes a CCW bridge slot, which
//!    gives its device number (`devno=fe.<ssid>.<slot %04x>`; the guest sees
//!    [`Plugged::ccw_address`]);
//! 2. `getfd` for every descriptor the parts own (named `<device id>-fd<n>`);
//! 3. each part's `qmp_add` in order (`blockdev-add`, `chardev-add`, `netdev_add`,
//!    `object-add`, then `device_add`).
//!
//! If a step fails, what was done is undone in reverse: `device_del` / `blockdev-del` /
//! `netdev_del` / `chardev-remove` / `object-del` of the parts already created, `closefd` of
//! descriptors QEMU received but no created part consumed, and the slot is freed. The error of
//! the failed step is returned ([`HotplugError::Step`]); rollback failures are logged.
//!
//! [`Hotplugger::unplug`] is `device_del` waiting for `DEVICE_DELETED` (bounded by a
//! timeout; for virtio-mem first `qom-set requested-size 0`), then the backends' removal in
//! reverse order, then the slot freed.
//!
//! # The flows
//!
//! Kata's flows are thin layers over the engine, building each device with the arch backend
//! (the same builder as cold plug): [`Hotplugger::add_block`] (virtio-blk on PCI or CCW,
//! virtio-scsi `scsi-hd`, or an NVDIMM), [`Hotplugger::add_vhost_user`] (vhost-user-blk), [`Hotplugger::add_vfio`],
//! [`Hotplugger::add_network`], [`Hotplugger::add_cpus`] / [`Hotplugger::remove_cpus`],
//! [`Hotplugger::add_memory`] (pc-dimm), [`Hotplugger::resize_virtio_mem`] and
//! [`Hotplugger::balloon`].
//!
//! The engine needs only a QMP client, the arch backend (bridge slots) and a
//! [`HotplugState`]; [`crate::Vm::hotplug`] lends it a running VM's.
//!
//! # Saving the state
//!
//! Each [`Plugged`] keeps the [`Device`] as it was plugged (its final `bus`/`addr`), and
//! [`HotplugState`] is serde-serializable, so a saved VM's hot-plugged devices can be
//! cold-plugged into the VM that restores it ([`SavedHotplug`], written by
//! [`crate::Vm::save`] next to the state file; see [`crate::lifecycle`]). A device holding
//! owned file descriptors (a network device's tap fds) cannot be saved:
//! [`SavedHotplug::capture`] refuses it with [`HotplugError::OwnedFds`].

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::Duration;

use hvarch_arch::bridge::{BridgeSlot, BridgeType, Bridges, PciPath};
use hvarch_arch::guest_arch::GuestArch;
use hvarch_arch::resources::{BlockDrive, NetEndpoint, VfioDev, VhostUserDevice, VhostUserKind};
use hvarch_arch::settings::BlockDriver;
use hvarch_arch::ArchError;
use hvarch_devices::config::VmConfig;
use hvarch_devices::cpu::CpuDevice;
use hvarch_devices::fd::QmpFdNames;
use hvarch_devices::memory::{MemoryBackend, MemoryDevice, MemoryDeviceKind};
use hvarch_devices::part::{Part, QmpCall};
use hvarch_devices::pci::PciAddr;
use hvarch_devices::scsi::ScsiDisk;
use hvarch_devices::transport::Transport;
use hvarch_devices::{Device, QemuDevice};
use hvarch_qmp::{commands, Command, Qmp};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::assemble::Assembled;
use crate::QemuArch;

/// How long a rollback waits for `DEVICE_DELETED` of a device it created.
pub const ROLLBACK_UNPLUG_TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong while hot-plugging or unplugging. Each variant names what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HotplugError {
    /// The device model refused the device (the error names the field at fault).
    #[error("cannot hot-plug {device}: {source}")]
    Device {
        /// The device (kind and id).
        device: String,
        /// The device model's error.
        #[source]
        source: hvarch_devices::Error,
    },
    /// The arch backend refused to build the device or had no bridge slot for it.
    #[error("cannot hot-plug {device}: {source}")]
    Arch {
        /// The device (kind and id).
        device: String,
        /// The backend's error (e.g. "no more bridge slots available").
        #[source]
        source: ArchError,
    },
    /// The device cannot be placed as asked (no free root port, not a PCI device, …).
    #[error("cannot place {device}: {reason}")]
    Placement {
        /// The device (kind and id).
        device: String,
        /// Why.
        reason: String,
    },
    /// A QMP step failed. For a hotplug, every earlier step has been undone.
    #[error("hotplug step `{step}` failed: {source}")]
    Step {
        /// The step, e.g. `device_add virtio-drive0` or `device_del virtio-drive0`.
        step: String,
        /// QEMU's refusal, a timeout or a lost connection.
        #[source]
        source: Box<hvarch_qmp::Error>,
    },
    /// QEMU refused `query-hotpluggable-cpus` (e.g. arm64 `virt`: "machine does not support
    /// hot-plugging CPUs").
    #[error("vCPU hotplug is not supported on this machine: {reason}")]
    CpuHotplugUnsupported {
        /// QEMU's message.
        reason: String,
    },
    /// Fewer vCPUs could be added than asked (those added stay).
    #[error("failed to hot add vCPUs: only {added} vCPUs of {requested} were added")]
    CpusPartial {
        /// vCPUs added.
        added: u32,
        /// vCPUs asked for (after clamping to the VM's maximum).
        requested: u32,
    },
    /// Memory cannot be hot-plugged into this VM.
    #[error("memory hotplug is not supported: {reason}")]
    MemoryHotplugUnsupported {
        /// Why (the machine, no slots, arm64 without UEFI firmware).
        reason: String,
    },
    /// No hot-plugged device has this id.
    #[error("device {id} is not hot-plugged")]
    NotPlugged {
        /// The id.
        id: String,
    },
    /// A device with this id is already hot-plugged.
    #[error("device {id} is already hot-plugged")]
    AlreadyPlugged {
        /// The id.
        id: String,
    },
    /// The hotplug state cannot be saved: a hot-plugged device holds file descriptors this
    /// process owns (a network device's tap or vhost fds), which a state file cannot carry.
    #[error(
        "cannot save the hotplug state: {device} holds {count} owned file descriptor(s) \
         (a network device's tap/vhost fds?), which cannot be written to a state file"
    )]
    OwnedFds {
        /// The device (kind and id).
        device: String,
        /// How many descriptors it owns.
        count: usize,
    },
    /// A saved hotplug state cannot be written or read, or does not fit the VM restoring it.
    #[error("hotplug state: {reason}")]
    State {
        /// What is wrong.
        reason: String,
    },
    /// The request itself is invalid.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was asked.
        what: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

fn step_error(step: impl Into<String>, source: hvarch_qmp::Error) -> HotplugError {
    HotplugError::Step {
        step: step.into(),
        source: Box::new(source),
    }
}

/// The result type of hotplug operations.
pub type HotplugResult<T> = std::result::Result<T, HotplugError>;

/// Where a PCI device goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// A free cold-plugged PCIe root port if the VM has one, else a bridge slot. (arm64
    /// hot-plugs through root ports in later Kata: SHPC bridges do not hot-plug on arm64
    /// guests.)
    #[default]
    Auto,
    /// A free PCIe root port (an error if there is none).
    RootPort,
    /// A free slot on a bridge (Kata 1.x's way).
    Bridge,
    /// The root bus, no bus or address (Kata's `HotplugVFIOOnRootBus`).
    RootBus,
    /// A bus (and address) named by the caller; no guest PCI path is computed.
    Bus {
        /// The bus id.
        bus: String,
        /// The address on it.
        addr: Option<PciAddr>,
    },
    /// The device's own `bus`/`addr` (SCSI disks, vCPUs, DIMMs, serial ports).
    AsIs,
}

/// Where a hot-plugged device sits (what is freed on unplug).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "LocationRepr", from = "LocationRepr")]
pub enum Location {
    /// A bridge slot.
    Bridge(BridgeSlot),
    /// A cold-plugged PCIe root port.
    RootPort {
        /// The port's id.
        port: String,
    },
    /// The root bus.
    RootBus,
    /// Wherever the device's own properties put it.
    AsGiven,
}

/// A hot-plugged device.
#[derive(Clone, Debug, PartialEq)]
pub struct Plugged {
    /// The guest-visible device's id (what `device_del` takes).
    pub id: String,
    /// The device kind, e.g. `virtio-blk`.
    pub kind: &'static str,
    /// Where it sits.
    pub location: Location,
    /// The guest PCI path a guest agent needs (`"02/01"`), for PCI placements.
    pub pci_path: Option<PciPath>,
    /// The commands that remove its parts, in creation order (unplug runs them in reverse).
    pub removal: Vec<QmpCall>,
    /// Whether it is a virtio-mem device (unplug first sets `requested-size` to 0).
    pub virtio_mem: bool,
    /// The device as it was plugged, with its final `bus` and `addr` (a root-bus device gets
    /// the slot QEMU chose): what a restored VM cold-plugs in its place.
    pub device: Device,
}

impl Plugged {
    /// The CCW bus id a guest agent finds a CCW device under (`0.<ssid>.<devno>`, Kata's
    /// `AddressFormatCCWForVirtServer`), for devices placed on a CCW bridge.
    pub fn ccw_address(&self) -> Option<String> {
        match &self.location {
            Location::Bridge(slot) => slot.ccw_guest_address().ok(),
            _ => None,
        }
    }
}

/// [`Location`] as stored: `{"type": "bridge", "bridge_id": …}`, `{"type": "root-port",
/// "port": …}`, `{"type": "root-bus"}`, `{"type": "as-given"}`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
enum LocationRepr {
    Bridge {
        bridge_id: String,
        bridge_type: BridgeType,
        bridge_addr: u32,
        slot: u32,
    },
    RootPort {
        port: String,
    },
    RootBus,
    AsGiven,
}

impl From<Location> for LocationRepr {
    fn from(location: Location) -> Self {
        match location {
            Location::Bridge(s) => LocationRepr::Bridge {
                bridge_id: s.bridge_id,
                bridge_type: s.bridge_type,
                bridge_addr: s.bridge_addr,
                slot: s.slot,
            },
            Location::RootPort { port } => LocationRepr::RootPort { port },
            Location::RootBus => LocationRepr::RootBus,
            Location::AsGiven => LocationRepr::AsGiven,
        }
    }
}

impl From<LocationRepr> for Location {
    fn from(repr: LocationRepr) -> Self {
        match repr {
            LocationRepr::Bridge {
                bridge_id,
                bridge_type,
                bridge_addr,
                slot,
            } => Location::Bridge(BridgeSlot {
                bridge_id,
                bridge_type,
                bridge_addr,
                slot,
            }),
            LocationRepr::RootPort { port } => Location::RootPort { port },
            LocationRepr::RootBus => Location::RootBus,
            LocationRepr::AsGiven => Location::AsGiven,
        }
    }
}

/// The removal commands a [`Plugged`] may hold ([`Part::qmp_del`]).
const REMOVAL_COMMANDS: [&str; 5] = [
    "device_del",
    "blockdev-del",
    "netdev_del",
    "object-del",
    "chardev-remove",
];

/// A [`QmpCall`] as stored: `{"command": …, "arguments": {…}}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QmpCallRepr {
    command: String,
    arguments: Value,
}

/// [`Plugged`] as stored: the PCI path as its slots (`[2, 1]` for `"02/01"`), the kind
/// checked against the device's on load.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluggedRepr {
    id: String,
    kind: String,
    location: Location,
    pci_path: Option<Vec<u32>>,
    removal: Vec<QmpCallRepr>,
    virtio_mem: bool,
    device: Device,
}

impl From<Plugged> for PluggedRepr {
    fn from(p: Plugged) -> Self {
        PluggedRepr {
            id: p.id,
            kind: p.kind.to_owned(),
            location: p.location,
            pci_path: p.pci_path.map(|path| path.slots().to_vec()),
            removal: p
                .removal
                .into_iter()
                .map(|c| QmpCallRepr {
                    command: c.command.to_owned(),
                    arguments: c.arguments,
                })
                .collect(),
            virtio_mem: p.virtio_mem,
            device: p.device,
        }
    }
}

impl Serialize for Plugged {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        PluggedRepr::from(self.clone()).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Plugged {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = PluggedRepr::deserialize(deserializer)?;
        Plugged::try_from(repr).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<PluggedRepr> for Plugged {
    type Error = String;

    fn try_from(r: PluggedRepr) -> Result<Self, String> {
        let kind = r.device.kind();
        if r.kind != kind {
            return Err(format!(
                "device {}: kind {} does not match its device ({kind})",
                r.id, r.kind
            ));
        }
        if r.device.id() != Some(r.id.as_str()) {
            return Err(format!("device {}: its device has another id", r.id));
        }
        let pci_path = r
            .pci_path
            .map(|slots| PciPath::new(&slots).map_err(|e| format!("device {}: {e}", r.id)))
            .transpose()?;
        let removal = r
            .removal
            .into_iter()
            .map(|c| {
                REMOVAL_COMMANDS
                    .iter()
                    .find(|known| **known == c.command)
                    .map(|command| QmpCall {
                        command,
                        arguments: c.arguments,
                    })
                    .ok_or_else(|| {
                        format!("device {}: unknown removal command {}", r.id, c.command)
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Plugged {
            id: r.id,
            kind,
            location: r.location,
            pci_path,
            removal,
            virtio_mem: r.virtio_mem,
            device: r.device,
        })
    }
}

/// What a VM has hot-plugged and what it can hot-plug into (bridge slots live in the arch
/// backend). Built from the assembled configuration ([`HotplugState::new`]).
///
/// Serializable (see [`SavedHotplug`] for the file): a device owning file descriptors makes
/// serialization fail.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotplugState {
    root_ports: Vec<String>,
    port_users: BTreeMap<String, String>,
    plugged: BTreeMap<String, Plugged>,
    /// The plugged devices' ids in plug order (a restore cold-plugs them in this order, so
    /// devices QEMU numbers in creation order, like DIMM slots, keep their numbers).
    #[serde(default)]
    order: Vec<String>,
    cpus: Vec<String>,
    boot_vcpus: u32,
    max_vcpus: u32,
    scsi_bus: Option<String>,
    firmware: bool,
    memory_slots: u32,
    ram_backend: Option<MemoryBackend>,
}

impl HotplugState {
    /// The state of a freshly assembled VM (nothing hot-plugged).
    pub fn new(assembled: &Assembled) -> Self {
        HotplugState::from_config(&assembled.config, assembled.max_vcpus)
    }

    /// The state of a fresh VM running `config`, with at most `max_vcpus` vCPUs: its
    /// cold-plugged root ports (all free), its virtio-scsi bus, whether UEFI firmware is
    /// loaded (two pflash images or a `-bios`), its memory slots and RAM backend.
    pub fn from_config(config: &VmConfig, max_vcpus: u32) -> Self {
        let mut state = HotplugState {
            boot_vcpus: config.smp.as_ref().map_or(1, |s| s.cpus),
            max_vcpus,
            firmware: config.pflash.len() == 2 || config.bios.is_some(),
            memory_slots: config
                .memory
                .as_ref()
                .and_then(|m| m.slots)
                .unwrap_or_default(),
            ram_backend: config.memory.as_ref().and_then(|m| m.backend.clone()),
            ..HotplugState::default()
        };
        for device in &config.devices {
            match device {
                Device::PcieRootPort(port) => state.root_ports.push(port.id.clone()),
                Device::ScsiController(c) if state.scsi_bus.is_none() => {
                    state.scsi_bus = Some(format!("{}.0", c.id));
                }
                _ => {}
            }
        }
        state
    }

    /// The cold-plugged root ports no hot-plugged device uses, in configuration order.
    pub fn free_root_ports(&self) -> Vec<&str> {
        self.root_ports
            .iter()
            .filter(|p| !self.port_users.contains_key(*p))
            .map(String::as_str)
            .collect()
    }

    /// The hot-plugged device `id`.
    pub fn plugged(&self, id: &str) -> Option<&Plugged> {
        self.plugged.get(id)
    }

    /// The ids of hot-plugged devices (vCPUs included), sorted.
    pub fn plugged_ids(&self) -> Vec<&str> {
        self.plugged.keys().map(String::as_str).collect()
    }

    /// The hot-plugged devices in the order they were plugged.
    pub fn plugged_in_order(&self) -> impl Iterator<Item = &Plugged> + '_ {
        let listed = self.order.iter().filter_map(|id| self.plugged.get(id));
        // Any device missing from `order` (a hand-written state) comes last, by id.
        let unlisted = self
            .plugged
            .values()
            .filter(|p| !self.order.contains(&p.id));
        listed.chain(unlisted)
    }

    fn insert(&mut self, plugged: Plugged) {
        self.order.retain(|id| *id != plugged.id);
        self.order.push(plugged.id.clone());
        self.plugged.insert(plugged.id.clone(), plugged);
    }

    fn remove(&mut self, id: &str) {
        self.order.retain(|o| o != id);
        self.plugged.remove(id);
    }

    /// The hot-added vCPUs' ids, oldest first.
    pub fn hotplugged_cpus(&self) -> &[String] {
        &self.cpus
    }

    fn free_port(&mut self, port: &str) {
        self.port_users.remove(port);
    }
}

/// The version of the [`SavedHotplug`] file format this crate writes and reads.
pub const SAVED_HOTPLUG_VERSION: u32 = 1;

/// A VM's hotplug state as [`crate::Vm::save`] writes it next to the migration state
/// (`<state>.hotplug.json`, mode 0600) and [`crate::Vm::restore`] reads it back: the arch
/// backend's bridges (with their occupied slots) and the [`HotplugState`].
///
/// The file is JSON (field names as below; `device` is [`Device`]'s own serde form, the
/// same as in a VM spec):
///
/// ```text
/// {"version": 1,
///  "bridges": [{"id": "pci-bridge-0", "bridge_type": "pci", "addr": 2, "devices": {"1": "virtio-d0"}}],
///  "state": {
///    "root_ports": ["rp0", "rp1"], "port_users": {"rp0": "virtio-d1"},
///    "plugged": {"virtio-d1": {"id": "virtio-d1", "kind": "virtio-blk",
///                              "location": {"type": "root-port", "port": "rp0"},
///                              "pci_path": [1, 0],
///                              "removal": [{"command": "blockdev-del", "arguments": {…}}, …],
///                              "virtio_mem": false, "device": {…}}},
///    "order": ["virtio-d1"], "cpus": [], "boot_vcpus": 1, "max_vcpus": 4,
///    "scsi_bus": null, "firmware": false, "memory_slots": 10, "ram_backend": null}}
/// ```
///
/// `location.type` is `bridge` (with `bridge_id`, `bridge_type`, `bridge_addr`, `slot`),
/// `root-port` (with `port`), `root-bus` or `as-given`; `pci_path` is the guest PCI path's
/// slots, root first; `order` is the plug order. Unknown fields are refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedHotplug {
    /// [`SAVED_HOTPLUG_VERSION`].
    pub version: u32,
    /// The arch backend's bridges and the devices in their slots.
    pub bridges: Bridges,
    /// What was hot-plugged, and where.
    pub state: HotplugState,
}

/// How many file descriptors `device` owns (each would be a `getfd` when hot-plugged).
fn owned_fds(device: &Device) -> Result<usize, hvarch_devices::Error> {
    let mut fds = QmpFdNames::new("saved-fd");
    for part in device.parts()? {
        part.qmp_add(&mut fds)?;
    }
    Ok(fds.pending().len())
}

impl SavedHotplug {
    /// What a VM with hotplug state `state` and arch backend `arch` must carry to its
    /// restored self. Refused with [`HotplugError::OwnedFds`] when a hot-plugged device
    /// holds owned file descriptors (a tap network device): nothing is skipped.
    pub fn capture(state: &HotplugState, arch: &dyn QemuArch) -> HotplugResult<Self> {
        for plugged in state.plugged_in_order() {
            let device = describe(&plugged.device);
            let count = owned_fds(&plugged.device).map_err(|source| HotplugError::Device {
                device: device.clone(),
                source,
            })?;
            if count > 0 {
                return Err(HotplugError::OwnedFds { device, count });
            }
        }
        Ok(SavedHotplug {
            version: SAVED_HOTPLUG_VERSION,
            bridges: arch.get_bridges().clone(),
            state: state.clone(),
        })
    }

    /// The JSON text of the file.
    pub fn to_json(&self) -> HotplugResult<String> {
        serde_json::to_string_pretty(self).map_err(|e| HotplugError::State {
            reason: format!("cannot serialize: {e}"),
        })
    }

    /// Parses the JSON text of the file (a version other than [`SAVED_HOTPLUG_VERSION`] is
    /// refused).
    pub fn from_json(text: &str) -> HotplugResult<Self> {
        let saved: SavedHotplug = serde_json::from_str(text).map_err(|e| HotplugError::State {
            reason: format!("cannot parse: {e}"),
        })?;
        if saved.version != SAVED_HOTPLUG_VERSION {
            return Err(HotplugError::State {
                reason: format!(
                    "version {} is not supported (expected {SAVED_HOTPLUG_VERSION})",
                    saved.version
                ),
            });
        }
        Ok(saved)
    }

    /// Prepares `assembled` (the same spec as the saved VM) to receive the saved VM: appends
    /// the hot-plugged devices to its configuration in plug order (cold-plugged, same ids,
    /// bus and addr) and gives its arch backend the saved bridges. Returns the state the
    /// restored VM starts with.
    ///
    /// Refused ([`HotplugError::State`]) when the assembled VM's root ports or bridges
    /// (ids, types, slots) differ from the saved VM's, or a saved device's id is taken.
    pub fn apply(self, assembled: &mut Assembled) -> HotplugResult<HotplugState> {
        let fresh = HotplugState::new(assembled);
        if fresh.root_ports != self.state.root_ports {
            return Err(HotplugError::State {
                reason: format!(
                    "the saved VM had root ports {:?}, the assembled VM has {:?}",
                    self.state.root_ports, fresh.root_ports
                ),
            });
        }
        let shape = |bridges: &Bridges| {
            bridges
                .iter()
                .map(|b| (b.id.clone(), b.bridge_type, b.addr))
                .collect::<Vec<_>>()
        };
        let (saved, here) = (shape(&self.bridges), shape(assembled.arch.get_bridges()));
        if saved != here {
            return Err(HotplugError::State {
                reason: format!(
                    "the saved VM had bridges {saved:?}, the assembled VM has {here:?}"
                ),
            });
        }
        let taken: std::collections::BTreeSet<&str> = assembled
            .config
            .devices
            .iter()
            .filter_map(Device::id)
            .collect();
        if let Some(p) = self
            .state
            .plugged
            .values()
            .find(|p| taken.contains(p.id.as_str()))
        {
            return Err(HotplugError::State {
                reason: format!(
                    "hot-plugged device {} has the id of a device of the assembled VM",
                    p.id
                ),
            });
        }
        let devices: Vec<Device> = self
            .state
            .plugged_in_order()
            .map(|p| p.device.clone())
            .collect();
        assembled.config.devices.extend(devices);
        assembled.arch.set_bridges(self.bridges);
        Ok(self.state)
    }
}

/// The hotplug engine, borrowing a QMP client, the arch backend and the [`HotplugState`].
#[derive(Debug)]
pub struct Hotplugger<'a> {
    qmp: &'a Qmp,
    arch: &'a mut dyn QemuArch,
    state: &'a mut HotplugState,
    /// Set by a rollback whose `device_del` was not confirmed: the device may still occupy
    /// its slot, so the slot is not handed out again.
    slot_still_used: bool,
}

/// A step's name for errors: `device_add virtio-drive0`.
fn step_name(call: &QmpCall) -> String {
    let id = ["id", "node-name", "fdname"]
        .iter()
        .find_map(|k| call.arguments.get(*k).and_then(Value::as_str));
    match id {
        Some(id) => format!("{} {id}", call.command),
        None => call.command.to_owned(),
    }
}

fn execute(qmp: &Qmp, call: &QmpCall) -> hvarch_qmp::Result<Value> {
    qmp.execute_command(&Command::new(call.command, call.arguments.clone()))
}

fn describe(device: &Device) -> String {
    match device.id() {
        Some(id) => format!("{} {id}", device.kind()),
        None => device.kind().to_owned(),
    }
}

/// Sets a PCI device's bus and address.
fn set_pci_placement(
    device: &mut Device,
    bus: Option<String>,
    addr: Option<PciAddr>,
) -> Result<(), String> {
    macro_rules! place {
        ($d:expr) => {{
            $d.bus = bus;
            $d.addr = addr;
        }};
    }
    match device {
        Device::Block(d) => place!(d),
        Device::Net(d) => place!(d),
        Device::VhostUser(d) => place!(d),
        Device::Vfio(d) => place!(d),
        Device::Balloon(d) => place!(d),
        Device::Rng(d) => place!(d),
        Device::Vsock(d) => place!(d),
        Device::ScsiController(d) => place!(d),
        Device::SerialController(d) => place!(d),
        Device::MemoryDevice(MemoryDevice {
            kind: MemoryDeviceKind::VirtioMem {
                bus: b, addr: a, ..
            },
            ..
        }) => {
            *b = bus;
            *a = addr;
        }
        other => {
            return Err(format!(
                "a {} is not placed on a PCI bus; use Placement::AsIs",
                other.kind()
            ))
        }
    }
    Ok(())
}

/// Kata's hot-plugged NVDIMM for `drive` (govmm's `ExecuteNVDIMMDeviceAdd`): a shared
/// `memory-backend-file` `nvdimmbackmem<id>` the size of the file (or block device) and an
/// `nvdimm` `nvdimm<id>` on it.
fn nvdimm_drive(drive: &BlockDrive) -> Result<MemoryDevice, String> {
    use std::io::{Seek, SeekFrom};
    // Seeking to the end gives a block device's size too (its metadata says 0).
    let size = std::fs::File::open(&drive.file)
        .and_then(|mut file| file.seek(SeekFrom::End(0)))
        .map_err(|e| format!("cannot size {}: {e}", drive.file.display()))?;
    let mut backend = MemoryBackend::file(format!("nvdimmbackmem{}", drive.id), size, &drive.file);
    backend.share = Some(true);
    if let hvarch_devices::memory::MemoryBackendKind::File { readonly, .. } = &mut backend.kind {
        *readonly = drive.read_only;
    }
    let mut nvdimm = MemoryDevice::nvdimm(format!("nvdimm{}", drive.id), backend);
    if let MemoryDeviceKind::Nvdimm { unarmed, .. } = &mut nvdimm.kind {
        *unarmed = drive.read_only;
    }
    Ok(nvdimm)
}

/// The slot of device `qdev_id` on a root bus, from a `query-pci` reply.
fn root_bus_slot(reply: &Value, qdev_id: &str) -> Option<u32> {
    reply
        .as_array()?
        .iter()
        .filter_map(|bus| bus.get("devices").and_then(Value::as_array))
        .flatten()
        .find(|d| d.get("qdev_id").and_then(Value::as_str) == Some(qdev_id))
        .and_then(|d| d.get("slot").and_then(Value::as_u64))
        .and_then(|s| u32::try_from(s).ok())
}

/// What the placement step decided.
struct Placed {
    location: Location,
    bus: Option<String>,
    addr: Option<PciAddr>,
    path: Option<PciPath>,
    set: bool,
    /// A CCW device's number (a CCW bridge slot): set instead of a bus and address.
    devno: Option<String>,
}

impl<'a> Hotplugger<'a> {
    /// An engine over `qmp`, `arch` (bridge slots) and `state`.
    pub fn new(qmp: &'a Qmp, arch: &'a mut dyn QemuArch, state: &'a mut HotplugState) -> Self {
        Hotplugger {
            qmp,
            arch,
            state,
            slot_still_used: false,
        }
    }

    /// The state (what is plugged, free root ports).
    pub fn state(&self) -> &HotplugState {
        self.state
    }

    /// Hot-plugs `device` at `placement` (see the [module docs](self)): placement, `getfd`
    /// for each owned descriptor, then each part's QMP command; undone step by step if a step
    /// fails.
    pub fn plug(
        &mut self,
        device: impl Into<Device>,
        placement: Placement,
    ) -> HotplugResult<Plugged> {
        let mut device = device.into();
        let name = describe(&device);
        let id = device
            .id()
            .ok_or_else(|| HotplugError::Placement {
                device: name.clone(),
                reason: "a hot-plugged device needs an id".into(),
            })?
            .to_owned();
        if self.state.plugged.contains_key(&id) {
            return Err(HotplugError::AlreadyPlugged { id });
        }
        let ccw = device
            .virtio()
            .is_some_and(|v| v.transport == Transport::Ccw);
        let placed = self.place(&id, &name, placement, ccw)?;
        match self.plug_placed(&mut device, &id, &name, &placed) {
            Ok(plugged) => {
                self.state.insert(plugged.clone());
                Ok(plugged)
            }
            Err(e) => {
                if std::mem::take(&mut self.slot_still_used) {
                    tracing::warn!(
                        device = %id,
                        "rollback could not confirm the device is gone; its slot stays reserved"
                    );
                } else {
                    self.free_location(&placed.location, &id);
                }
                Err(e)
            }
        }
    }

    /// Takes a place for device `id` (a root port or a bridge slot) and computes its path.
    /// A CCW device (`ccw`) goes to a CCW bridge slot, which gives its device number.
    fn place(
        &mut self,
        id: &str,
        name: &str,
        placement: Placement,
        ccw: bool,
    ) -> HotplugResult<Placed> {
        let placement = match placement {
            Placement::Auto if ccw => Placement::Bridge,
            Placement::Auto if !self.state.free_root_ports().is_empty() => Placement::RootPort,
            Placement::Auto => Placement::Bridge,
            other => other,
        };
        let given = |bus, addr| Placed {
            location: Location::AsGiven,
            bus,
            addr,
            path: None,
            set: true,
            devno: None,
        };
        match placement {
            Placement::AsIs => Ok(Placed {
                set: false,
                ..given(None, None)
            }),
            Placement::Bus { bus, addr } => Ok(given(Some(bus), addr)),
            Placement::RootBus => Ok(Placed {
                location: Location::RootBus,
                ..given(None, None)
            }),
            Placement::Bridge => {
                let bridge_type = if ccw {
                    BridgeType::Ccw
                } else {
                    self.arch
                        .get_bridges()
                        .iter()
                        .map(|b| b.bridge_type)
                        .find(|t| *t != BridgeType::Ccw)
                        .unwrap_or(BridgeType::Pci)
                };
                let slot = self
                    .arch
                    .add_device_to_bridge(id, bridge_type)
                    .map_err(|source| HotplugError::Arch {
                        device: name.to_owned(),
                        source,
                    })?;
                if bridge_type == BridgeType::Ccw {
                    // The slot is the device number (Kata 1.x's network hotplug took a PCI
                    // slot here and hex-encoded its text: see hvarch-s390x).
                    let devno = slot.ccw_devno().map_err(|source| HotplugError::Arch {
                        device: name.to_owned(),
                        source,
                    })?;
                    return Ok(Placed {
                        location: Location::Bridge(slot),
                        bus: None,
                        addr: None,
                        path: None,
                        set: false,
                        devno: Some(devno),
                    });
                }
                let placed = slot.pci_path().map(|path| {
                    let addr = u8::try_from(slot.slot)
                        .ok()
                        .and_then(|s| PciAddr::slot_only(s).ok());
                    (path, addr)
                });
                match placed {
                    Ok((path, Some(addr))) => Ok(Placed {
                        location: Location::Bridge(slot.clone()),
                        bus: Some(slot.bridge_id.clone()),
                        addr: Some(addr),
                        path: Some(path),
                        set: true,
                        devno: None,
                    }),
                    Ok((_, None)) => {
                        let _ = self.arch.remove_device_from_bridge(id);
                        Err(HotplugError::Placement {
                            device: name.to_owned(),
                            reason: format!("bridge slot {} is not a PCI slot", slot.slot),
                        })
                    }
                    Err(source) => {
                        let _ = self.arch.remove_device_from_bridge(id);
                        Err(HotplugError::Arch {
                            device: name.to_owned(),
                            source,
                        })
                    }
                }
            }
            Placement::RootPort => {
                let port = self
                    .state
                    .free_root_ports()
                    .first()
                    .map(|p| (*p).to_owned())
                    .ok_or_else(|| HotplugError::Placement {
                        device: name.to_owned(),
                        reason: if self.state.root_ports.is_empty() {
                            "the VM has no PCIe root ports (hypervisor.pcie_root_ports)".into()
                        } else {
                            format!(
                                "all {} PCIe root ports are in use",
                                self.state.root_ports.len()
                            )
                        },
                    })?;
                let reply = self
                    .qmp
                    .execute_command(&commands::query_pci())
                    .map_err(|source| step_error("query-pci", source))?;
                let slot = root_bus_slot(&reply, &port).ok_or_else(|| HotplugError::Placement {
                    device: name.to_owned(),
                    reason: format!("root port {port} is not on a root bus in query-pci"),
                })?;
                let path = PciPath::new(&[slot, 0]).map_err(|source| HotplugError::Arch {
                    device: name.to_owned(),
                    source,
                })?;
                self.state.port_users.insert(port.clone(), id.to_owned());
                Ok(Placed {
                    location: Location::RootPort { port: port.clone() },
                    bus: Some(port),
                    addr: None,
                    path: Some(path),
                    set: true,
                    devno: None,
                })
            }
            Placement::Auto => unreachable!("resolved above"),
        }
    }

    fn free_location(&mut self, location: &Location, id: &str) {
        match location {
            Location::Bridge(_) => {
                if let Err(e) = self.arch.remove_device_from_bridge(id) {
                    tracing::warn!(device = id, error = %e, "freeing the bridge slot failed");
                }
            }
            Location::RootPort { port } => self.state.free_port(port),
            Location::RootBus | Location::AsGiven => {}
        }
    }

    fn plug_placed(
        &mut self,
        device: &mut Device,
        id: &str,
        name: &str,
        placed: &Placed,
    ) -> HotplugResult<Plugged> {
        if placed.set {
            set_pci_placement(device, placed.bus.clone(), placed.addr).map_err(|reason| {
                HotplugError::Placement {
                    device: name.to_owned(),
                    reason,
                }
            })?;
        }
        if let Some(devno) = &placed.devno {
            let virtio = device.virtio_mut().ok_or_else(|| HotplugError::Placement {
                device: name.to_owned(),
                reason: "a CCW bridge slot needs a virtio device".into(),
            })?;
            virtio.devno = Some(devno.clone());
        }
        let device_error = |source| HotplugError::Device {
            device: name.to_owned(),
            source,
        };
        let parts: Vec<Part> = device.parts().map_err(device_error)?;
        // Render every command first: nothing is sent for a device that cannot render.
        let mut fds = QmpFdNames::new(format!("{id}-fd"));
        let mut calls = Vec::with_capacity(parts.len());
        for part in &parts {
            let before = fds.pending().len();
            let call = part.qmp_add(&mut fds).map_err(device_error)?;
            calls.push((part, call, before..fds.pending().len()));
        }
        let virtio_mem = matches!(
            device,
            Device::MemoryDevice(MemoryDevice {
                kind: MemoryDeviceKind::VirtioMem { .. },
                ..
            })
        );

        let mut sent_fds: Vec<String> = Vec::new();
        let mut consumed = 0usize;
        let mut created: Vec<QmpCall> = Vec::new();
        let fail = |this: &mut Self,
                    created: &[QmpCall],
                    unconsumed: &[String],
                    step: String,
                    source: hvarch_qmp::Error| {
            tracing::warn!(device = id, step = %step, error = %source, "hotplug failed; rolling back");
            this.rollback(created, unconsumed);
            Err(step_error(step, source))
        };
        for (fd_name, fd) in fds.pending() {
            if let Err(source) = self.qmp.getfd(fd_name, fd.as_fd()) {
                return fail(
                    self,
                    &created,
                    &sent_fds,
                    format!("getfd {fd_name}"),
                    source,
                );
            }
            sent_fds.push(fd_name.clone());
        }
        for (part, call, names) in &calls {
            if let Err(source) = execute(self.qmp, call) {
                // A step that timed out (or whose reply was lost) may still take effect in
                // QEMU: undo it too (undoing what does not exist only logs a warning).
                if matches!(
                    source,
                    hvarch_qmp::Error::Timeout { .. } | hvarch_qmp::Error::Disconnected
                ) {
                    if let Some(del) = part.qmp_del() {
                        created.push(del);
                    }
                    // Its descriptors are closed too: if QEMU took them, closefd only fails.
                }
                return fail(
                    self,
                    &created,
                    sent_fds.get(consumed..).unwrap_or_default(),
                    step_name(call),
                    source,
                );
            }
            consumed = consumed.max(names.end);
            if let Some(del) = part.qmp_del() {
                created.push(del);
            }
        }
        let mut path = placed.path.clone();
        if placed.location == Location::RootBus {
            let found = self
                .qmp
                .execute_command(&commands::query_pci())
                .map(|reply| root_bus_slot(&reply, id));
            match found {
                Ok(Some(slot)) => {
                    path = PciPath::new(&[slot]).ok();
                    // Keep the slot QEMU chose: a restore cold-plugs the device there.
                    if let Some(addr) = u8::try_from(slot)
                        .ok()
                        .and_then(|s| PciAddr::slot_only(s).ok())
                    {
                        let _ = set_pci_placement(device, None, Some(addr));
                    }
                }
                Ok(None) => tracing::warn!(device = id, "not found on a root bus in query-pci"),
                Err(source) => {
                    return fail(
                        self,
                        &created,
                        sent_fds.get(consumed..).unwrap_or_default(),
                        "query-pci".into(),
                        source,
                    )
                }
            }
        }
        // Any descriptor no part consumed (none, normally) is released in QEMU.
        self.close_fds(sent_fds.get(consumed..).unwrap_or_default());
        Ok(Plugged {
            id: id.to_owned(),
            kind: device.kind(),
            location: placed.location.clone(),
            pci_path: path,
            removal: created,
            virtio_mem,
            device: device.clone(),
        })
    }

    /// Undoes `created` in reverse, then releases `fds` in QEMU. Errors are logged; a
    /// `device_del` that is not confirmed (other than by "not found") keeps the slot reserved.
    fn rollback(&mut self, created: &[QmpCall], fds: &[String]) {
        for call in created.iter().rev() {
            let result = if call.command == "device_del" {
                let id = call.arguments["id"].as_str().unwrap_or_default();
                self.qmp.device_del(id, ROLLBACK_UNPLUG_TIMEOUT).map(drop)
            } else {
                execute(self.qmp, call).map(drop)
            };
            if let Err(e) = result {
                let gone = matches!(&e, hvarch_qmp::Error::Command { class, .. } if class == "DeviceNotFound");
                if call.command == "device_del" && !gone {
                    self.slot_still_used = true;
                }
                tracing::warn!(step = %step_name(call), error = %e, "rollback step failed");
            }
        }
        self.close_fds(fds);
    }

    fn close_fds(&self, names: &[String]) {
        for name in names {
            if let Err(e) = self.qmp.execute_raw("closefd", json!({ "fdname": name })) {
                tracing::warn!(fd = %name, error = %e, "closefd failed");
            }
        }
    }

    /// Unplugs device `id`: `device_del` and a wait of up to `timeout` for `DEVICE_DELETED`
    /// (virtio-mem: `qom-set requested-size 0` first), then its backends' removal in
    /// reverse order, then its slot freed.
    ///
    /// If the device is not released in time, the error is returned and the device stays
    /// registered (call again later; a device QEMU no longer knows counts as removed).
    /// Backend removal errors are returned after the device is deregistered.
    pub fn unplug(&mut self, id: &str, timeout: Duration) -> HotplugResult<()> {
        let plugged = self
            .state
            .plugged
            .get(id)
            .cloned()
            .ok_or_else(|| HotplugError::NotPlugged { id: id.to_owned() })?;
        if plugged.virtio_mem {
            let call = commands::qom_set(&format!("/machine/peripheral/{id}"), "requested-size", 0);
            self.qmp
                .execute_command(&call)
                .map_err(|source| step_error(format!("qom-set {id} requested-size 0"), source))?;
        }
        let (devices, backends): (Vec<&QmpCall>, Vec<&QmpCall>) = plugged
            .removal
            .iter()
            .rev()
            .partition(|c| c.command == "device_del");
        for call in devices {
            let dev = call.arguments["id"].as_str().unwrap_or_default();
            match self.qmp.device_del(dev, timeout) {
                Ok(_) => {}
                Err(hvarch_qmp::Error::Command { class, .. }) if class == "DeviceNotFound" => {
                    tracing::debug!(device = dev, "already gone");
                }
                Err(source) => return Err(step_error(format!("device_del {dev}"), source)),
            }
        }
        let mut first_error = None;
        for call in backends {
            if let Err(source) = execute(self.qmp, call) {
                tracing::warn!(step = %step_name(call), error = %source, "backend removal failed");
                first_error.get_or_insert(step_error(step_name(call), source));
            }
        }
        self.state.remove(id);
        self.free_location(&plugged.location, id);
        first_error.map_or(Ok(()), Err)
    }

    /// Hot-plugs a block drive (Kata's `hotplugAddBlockDevice`): the arch backend's disk
    /// with node name `<drive id>` and `share-rw=on`, then
    ///
    /// - [`BlockDriver::VirtioBlk`]: `blockdev-add`, `device_add` of the backend's
    ///   virtio-blk (`virtio-blk-pci`; `virtio-blk-ccw` on s390x) with id
    ///   `virtio-<drive id>` at `placement`;
    /// - [`BlockDriver::VirtioBlkCcw`]: the same on the CCW transport: a CCW bridge slot
    ///   gives the device number (`devno=fe.<ssid>.<slot>`; the guest finds the disk at
    ///   [`Plugged::ccw_address`]);
    /// - [`BlockDriver::VirtioScsi`]: `blockdev-add`, `device_add scsi-hd` on the VM's
    ///   virtio-scsi bus (`scsi0.0`) with `scsi-id` = index / 256, `lun` = index % 256
    ///   (`placement` is not used);
    /// - [`BlockDriver::Nvdimm`]: `object-add memory-backend-file`
    ///   `nvdimmbackmem<drive id>` on the file (shared, sized from the file or block
    ///   device; read-only and the NVDIMM unarmed for a read-only drive), then
    ///   `device_add nvdimm` `nvdimm<drive id>` (`placement` is not used). The machine must
    ///   allow it (`nvdimm=on`, memory slots; arm64 also UEFI firmware): QEMU's refusal is
    ///   the error.
    pub fn add_block(
        &mut self,
        drive: &BlockDrive,
        driver: BlockDriver,
        placement: Placement,
    ) -> HotplugResult<Plugged> {
        let name = format!("block drive {}", drive.id);
        if driver == BlockDriver::Nvdimm {
            let nvdimm = nvdimm_drive(drive).map_err(|reason| HotplugError::Invalid {
                what: "add_block",
                reason,
            })?;
            return self.plug(nvdimm, Placement::AsIs);
        }
        let mut built = Vec::new();
        self.arch
            .append_block_device(&mut built, drive)
            .map_err(|source| HotplugError::Arch {
                device: name.clone(),
                source,
            })?;
        let Some(Device::Block(mut disk)) = built.pop() else {
            return Err(HotplugError::Invalid {
                what: "add_block",
                reason: "the arch backend did not build a virtio-blk device".into(),
            });
        };
        disk.id = format!("virtio-{}", drive.id);
        disk.backend.node_name = drive.id.clone();
        disk.share_rw = true;
        match driver {
            BlockDriver::VirtioBlk => self.plug(disk, placement),
            BlockDriver::VirtioBlkCcw => {
                disk.virtio.transport = Transport::Ccw;
                disk.virtio.disable_modern = false;
                self.plug(disk, placement)
            }
            BlockDriver::VirtioScsi => {
                let bus = self
                    .state
                    .scsi_bus
                    .clone()
                    .ok_or_else(|| HotplugError::Placement {
                        device: name,
                        reason: "the VM has no virtio-scsi controller".into(),
                    })?;
                let mut scsi = ScsiDisk::new(disk.id, bus, disk.backend);
                scsi.scsi_id = Some(drive.index / 256);
                scsi.lun = Some(drive.index % 256);
                scsi.share_rw = true;
                self.plug(scsi, Placement::AsIs)
            }
            other => Err(HotplugError::Invalid {
                what: "add_block",
                reason: format!(
                    "Block device {} not recognized: driver {other:?} cannot be hot-plugged",
                    drive.id
                ),
            }),
        }
    }

    /// Hot-plugs a vhost-user-blk device (Kata: other vhost-user kinds are refused):
    /// `chardev-add` (a client socket `char-<dev id>`), then `device_add vhost-user-blk-pci`
    /// with id `virtio-<dev id>` at `placement`.
    pub fn add_vhost_user(
        &mut self,
        attrs: &VhostUserDevice,
        placement: Placement,
    ) -> HotplugResult<Plugged> {
        if attrs.kind != VhostUserKind::Blk {
            return Err(HotplugError::Invalid {
                what: "add_vhost_user",
                reason: format!("Incorrect vhost-user device type found: {:?}", attrs.kind),
            });
        }
        let mut built = Vec::new();
        self.arch
            .append_vhost_user_device(&mut built, attrs)
            .map_err(|source| HotplugError::Arch {
                device: format!("vhost-user {}", attrs.dev_id),
                source,
            })?;
        let Some(Device::VhostUser(mut device)) = built.pop() else {
            return Err(HotplugError::Invalid {
                what: "add_vhost_user",
                reason: "the arch backend did not build a vhost-user device".into(),
            });
        };
        device.id = format!("virtio-{}", attrs.dev_id);
        self.plug(device, placement)
    }

    /// Hot-plugs a VFIO device (id as given): on a bridge slot, a root port, or the root bus
    /// ([`Placement::RootBus`], Kata's `HotplugVFIOOnRootBus`).
    pub fn add_vfio(&mut self, dev: &VfioDev, placement: Placement) -> HotplugResult<Plugged> {
        let mut built = Vec::new();
        self.arch
            .append_vfio_device(&mut built, dev)
            .map_err(|source| HotplugError::Arch {
                device: format!("vfio {}", dev.id),
                source,
            })?;
        let device = built.pop().ok_or_else(|| HotplugError::Invalid {
            what: "add_vfio",
            reason: "the arch backend built no device".into(),
        })?;
        self.plug(device, placement)
    }

    /// Hot-plugs a network endpoint (Kata's `hotplugNetDevice`): `getfd` for each tap and
    /// vhost descriptor, `netdev_add` (id `<ifname>`, with `fds`/`vhostfds`), then
    /// `device_add virtio-net-pci` (id `virtio-<ifname>`, `mq=on` and `vectors=2q+2` for
    /// several queues) at `placement`.
    pub fn add_network(
        &mut self,
        endpoint: &NetEndpoint,
        placement: Placement,
    ) -> HotplugResult<Plugged> {
        let name = format!("network {}", endpoint.ifname);
        let mut built = Vec::new();
        self.arch
            .append_network(&mut built, endpoint)
            .map_err(|source| HotplugError::Arch {
                device: name.clone(),
                source,
            })?;
        let Some(Device::Net(mut nic)) = built.pop() else {
            return Err(HotplugError::Invalid {
                what: "add_network",
                reason: "the arch backend did not build a virtio-net device".into(),
            });
        };
        nic.id = format!("virtio-{}", endpoint.ifname);
        nic.netdev_id = endpoint.ifname.clone();
        self.plug(nic, placement)
    }

    /// Adds up to `amount` vCPUs (Kata's `hotplugAddCPUs`), clamped to the VM's maximum:
    /// `query-hotpluggable-cpus`, then `device_add` of each free slot (no `qom-path`) with
    /// its socket/die/core/thread ids and id `cpu-<n>`. A slot QEMU refuses is skipped.
    /// Returns how many were added; fewer than asked is [`HotplugError::CpusPartial`].
    /// A machine without CPU hotplug is [`HotplugError::CpuHotplugUnsupported`].
    pub fn add_cpus(&mut self, amount: u32) -> HotplugResult<u32> {
        let current = self.state.boot_vcpus + self.state.cpus.len() as u32;
        let room = self.state.max_vcpus.saturating_sub(current);
        if amount > room {
            tracing::warn!(amount, room, "vCPU hotplug clamped to the VM's maximum");
        }
        let amount = amount.min(room);
        if amount == 0 {
            return Ok(0);
        }
        let slots = match self
            .qmp
            .execute_command(&commands::query_hotpluggable_cpus())
        {
            Ok(slots) => slots,
            Err(hvarch_qmp::Error::Command { desc, .. }) => {
                return Err(HotplugError::CpuHotplugUnsupported { reason: desc })
            }
            Err(source) => return Err(step_error("query-hotpluggable-cpus", source)),
        };
        let mut added = 0;
        for slot in slots.as_array().into_iter().flatten() {
            if added == amount {
                break;
            }
            if slot.get("qom-path").is_some() {
                continue;
            }
            let props = &slot["props"];
            let id_of = |key: &str| {
                props
                    .get(key)
                    .and_then(Value::as_u64)
                    .and_then(|v| u32::try_from(v).ok())
            };
            let cpu = CpuDevice {
                driver: slot["type"].as_str().unwrap_or_default().to_owned(),
                id: format!("cpu-{}", self.state.cpus.len()),
                socket_id: id_of("socket-id"),
                die_id: id_of("die-id"),
                core_id: id_of("core-id"),
                thread_id: id_of("thread-id"),
            };
            match self.plug(cpu, Placement::AsIs) {
                Ok(plugged) => {
                    self.state.cpus.push(plugged.id);
                    added += 1;
                }
                Err(e) => tracing::warn!(error = %e, "vCPU slot refused; trying the next"),
            }
        }
        if added < amount {
            return Err(HotplugError::CpusPartial {
                added,
                requested: amount,
            });
        }
        Ok(added)
    }

    /// Removes up to `amount` hot-added vCPUs, last added first, each with a `device_del`
    /// waiting up to `timeout`. Returns how many were removed.
    pub fn remove_cpus(&mut self, amount: u32, timeout: Duration) -> HotplugResult<u32> {
        let mut removed = 0;
        while removed < amount {
            let Some(id) = self.state.cpus.last().cloned() else {
                break;
            };
            self.unplug(&id, timeout)?;
            self.state.cpus.pop();
            removed += 1;
        }
        Ok(removed)
    }

    /// Hot-plugs `size_mb` MiB of RAM as a DIMM (Kata's `hotplugMemory`): slot = the highest
    /// slot of `query-memory-devices` + 1 (or 0), `object-add` a backend `mem<slot>` like the
    /// VM's RAM backend (RAM, file or memfd, shared or not), then `device_add pc-dimm`
    /// `dimm<slot>`.
    ///
    /// Refused with [`HotplugError::MemoryHotplugUnsupported`] when the backend says the
    /// machine has no DIMM hotplug, the VM has no memory slots, or on arm64 without UEFI
    /// firmware (`virt` needs ACPI's GED device, which only firmware provides).
    pub fn add_memory(&mut self, size_mb: u64) -> HotplugResult<Plugged> {
        if size_mb == 0 {
            return Err(HotplugError::Invalid {
                what: "add_memory",
                reason: "the size must be more than 0 MiB".into(),
            });
        }
        let unsupported = |reason: String| Err(HotplugError::MemoryHotplugUnsupported { reason });
        if !self.arch.supports_guest_memory_hotplug() {
            return unsupported(format!(
                "machine {} does not support memory hotplug",
                self.arch.base().machine_type
            ));
        }
        if self.state.memory_slots == 0 {
            return unsupported(
                "the VM has no memory hotplug slots (hypervisor.memory_slots = 0)".into(),
            );
        }
        if self.arch.guest_arch() == GuestArch::Aarch64 && !self.state.firmware {
            return unsupported(
                "arm64 virt needs ACPI (the GED device) for pc-dimm, which needs UEFI firmware: \
                 load two pflash images (hypervisor.pflashes) or a bios"
                    .into(),
            );
        }
        let devices = self
            .qmp
            .execute_command(&commands::query_memory_devices())
            .map_err(|source| step_error("query-memory-devices", source))?;
        let slot = devices
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["data"].get("slot").and_then(Value::as_u64))
            .max()
            .map_or(0, |s| s + 1);
        let size = size_mb.checked_mul(1 << 20).ok_or(HotplugError::Invalid {
            what: "add_memory",
            reason: format!("{size_mb} MiB does not fit in 64 bits of bytes"),
        })?;
        let mut backend = MemoryBackend::ram(format!("mem{slot}"), size);
        if let Some(ram) = &self.state.ram_backend {
            backend.kind = ram.kind.clone();
            backend.share = ram.share;
            backend.prealloc = ram.prealloc;
        }
        self.plug(
            MemoryDevice::pc_dimm(format!("dimm{slot}"), backend),
            Placement::AsIs,
        )
    }

    /// Asks virtio-mem device `id` to plug `requested_bytes` (`qom-set requested-size`).
    pub fn resize_virtio_mem(&mut self, id: &str, requested_bytes: u64) -> HotplugResult<()> {
        let call = commands::qom_set(
            &format!("/machine/peripheral/{id}"),
            "requested-size",
            requested_bytes,
        );
        self.qmp.execute_command(&call).map(drop).map_err(|source| {
            step_error(
                format!("qom-set {id} requested-size {requested_bytes}"),
                source,
            )
        })
    }

    /// Sets the balloon's target guest memory size (`balloon {"value": bytes}`).
    pub fn balloon(&mut self, bytes: u64) -> HotplugResult<()> {
        self.qmp
            .execute_command(&commands::balloon(bytes))
            .map(drop)
            .map_err(|source| step_error(format!("balloon {bytes}"), source))
    }
}
