//! What a VM has hot-plugged ([`HotplugState`]): each device as plugged ([`Plugged`]), where
//! it sits ([`Location`]), the removals QEMU has not confirmed yet, and the serde forms a
//! saved VM's state file uses.

use std::collections::BTreeMap;

use hvarch_arch::bridge::{BridgeSlot, BridgeType, PciPath};
use hvarch_devices::config::VmConfig;
use hvarch_devices::memory::MemoryBackend;
use hvarch_devices::part::QmpCall;
use hvarch_devices::{Device, QemuDevice};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::root_bus;
use crate::assemble::Assembled;

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

    /// The removals left once QEMU has deleted the device itself: its backends', in the
    /// order they run (the reverse of creation).
    pub fn backend_removals(&self) -> impl Iterator<Item = &QmpCall> + '_ {
        self.removal
            .iter()
            .rev()
            .filter(|call| call.command != "device_del")
    }

    /// Whether QEMU still has the device itself: its `removal` holds a `device_del` (a
    /// pending removal whose device is gone holds only the backends left to remove).
    pub fn holds_device(&self) -> bool {
        self.removal.iter().any(|call| call.command == "device_del")
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

/// The removal commands a [`Plugged`] may hold ([`hvarch_devices::part::Part::qmp_del`]).
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
/// # Pending removals
///
/// A device QEMU was asked to delete (`device_del`) without confirming it in time
/// (`DEVICE_DELETED`: Linux's pciehp waits 5 s before it releases a device; a paused guest
/// never does) is a *pending removal*: it keeps its place (root port or bridge slot) and
/// its backends (block node, netdev, chardev, memory backend), because QEMU still has the
/// device and the device still uses them. The removal completes, backends removed and place
/// freed, when its `DEVICE_DELETED` arrives (noticed at the start of the next hotplug call),
/// by a later [`Hotplugger::unplug`](super::Hotplugger::unplug) of the id, or by
/// [`Hotplugger::reconcile`](super::Hotplugger::reconcile). Until then the id cannot be
/// plugged again ([`HotplugError::RemovalPending`](super::HotplugError::RemovalPending)).
///
/// A backend QEMU refuses to remove once the device is gone (a block node still in use
/// while QEMU finalizes the device) keeps the record pending, holding only what is left
/// ([`Plugged::holds_device`] is then false); the next unplug or reconcile retries it.
///
/// Serializable (see [`SavedHotplug`](super::SavedHotplug) for the file), pending removals
/// included: a device owning file descriptors makes serialization fail.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotplugState {
    pub(super) root_ports: Vec<String>,
    /// Each cold-plugged root port's slot on the root bus (a device on the port is at
    /// `<slot>/00`): computed from the configuration, or learned once from `query-pci`.
    #[serde(default)]
    pub(super) root_port_slots: BTreeMap<String, u32>,
    pub(super) port_users: BTreeMap<String, String>,
    pub(super) plugged: BTreeMap<String, Plugged>,
    /// Devices whose removal QEMU has not confirmed, with the removals still to run.
    #[serde(default)]
    pub(super) pending_removals: BTreeMap<String, Plugged>,
    /// The plugged devices' ids in plug order (a restore cold-plugs them in this order, so
    /// devices QEMU numbers in creation order, like DIMM slots, keep their numbers).
    #[serde(default)]
    pub(super) order: Vec<String>,
    pub(super) cpus: Vec<String>,
    pub(super) boot_vcpus: u32,
    pub(super) max_vcpus: u32,
    pub(super) scsi_bus: Option<String>,
    pub(super) firmware: bool,
    pub(super) memory_slots: u32,
    pub(super) ram_backend: Option<MemoryBackend>,
}

impl HotplugState {
    /// The state of a freshly assembled VM (nothing hot-plugged).
    pub fn new(assembled: &Assembled) -> Self {
        HotplugState::from_config(&assembled.config, assembled.max_vcpus)
    }

    /// The state of a fresh VM running `config`, with at most `max_vcpus` vCPUs: its
    /// cold-plugged root ports (all free) and their slots on the root bus where the
    /// configuration determines them, its virtio-scsi bus, whether UEFI firmware is loaded
    /// (two pflash images or a `-bios`), its memory slots and RAM backend.
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
        if let Some(slots) = root_bus::slots(config) {
            state.root_port_slots = slots
                .into_iter()
                .filter(|(id, _)| state.root_ports.contains(id))
                .collect();
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

    /// The slot of root port `port` on the root bus, if hvarch knows it (from the
    /// configuration, or from `query-pci` after a first hot-plug on a root port).
    pub fn root_port_slot(&self, port: &str) -> Option<u32> {
        self.root_port_slots.get(port).copied()
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
        self.records_in_order()
            .filter(|p| self.plugged.contains_key(&p.id))
    }

    /// The device `id` if its removal is pending (see [pending removals](Self#pending-removals));
    /// its `removal` lists what is still to remove, in creation order: the backends, and the
    /// device's own `device_del` while QEMU still has the device.
    pub fn pending_removal(&self, id: &str) -> Option<&Plugged> {
        self.pending_removals.get(id)
    }

    /// The ids of the devices whose removal is pending, sorted.
    pub fn pending_removal_ids(&self) -> Vec<&str> {
        self.pending_removals.keys().map(String::as_str).collect()
    }

    /// Every device QEMU has (plugged, or with a pending removal of the device itself), in
    /// plug order: what a restored VM must cold-plug.
    pub(super) fn devices_in_order(&self) -> impl Iterator<Item = &Plugged> + '_ {
        self.records_in_order().filter(|p| p.holds_device())
    }

    /// Every record, plugged or pending, in plug order.
    pub(super) fn records_in_order(&self) -> impl Iterator<Item = &Plugged> + '_ {
        let known = |id: &String| {
            self.plugged
                .get(id)
                .or_else(|| self.pending_removals.get(id))
        };
        let listed = self.order.iter().filter_map(known);
        // Any device missing from `order` (a hand-written state) comes last, by id.
        let unlisted = self
            .plugged
            .values()
            .chain(self.pending_removals.values())
            .filter(|p| !self.order.contains(&p.id));
        listed.chain(unlisted)
    }

    /// The hot-added vCPUs' ids, oldest first.
    pub fn hotplugged_cpus(&self) -> &[String] {
        &self.cpus
    }

    /// Whether `id` is plugged or its removal pending.
    pub(super) fn knows(&self, id: &str) -> bool {
        self.plugged.contains_key(id) || self.pending_removals.contains_key(id)
    }

    pub(super) fn insert(&mut self, plugged: Plugged) {
        self.order.retain(|id| *id != plugged.id);
        self.order.push(plugged.id.clone());
        self.plugged.insert(plugged.id.clone(), plugged);
    }

    /// Records `device` as a pending removal (keeping its place in the plug order).
    pub(super) fn insert_pending(&mut self, device: Plugged) {
        self.plugged.remove(&device.id);
        if !self.order.contains(&device.id) {
            self.order.push(device.id.clone());
        }
        self.pending_removals.insert(device.id.clone(), device);
    }

    /// Forgets device `id` (plugged or pending), returning its record.
    pub(super) fn take(&mut self, id: &str) -> Option<Plugged> {
        let device = self
            .plugged
            .remove(id)
            .or_else(|| self.pending_removals.remove(id))?;
        self.order.retain(|o| o != id);
        self.cpus.retain(|c| c != id);
        Some(device)
    }

    pub(super) fn free_port(&mut self, port: &str) {
        self.port_users.remove(port);
    }
}
