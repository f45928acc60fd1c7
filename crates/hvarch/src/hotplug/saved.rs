//! The hotplug state a saved VM carries to its restored self ([`SavedHotplug`]).

use hvarch_arch::bridge::Bridges;
use hvarch_devices::fd::QmpFdNames;
use hvarch_devices::{Device, QemuDevice};
use serde::{Deserialize, Serialize};

use super::engine::describe;
use super::{HotplugError, HotplugResult, HotplugState};
use crate::assemble::Assembled;
use crate::QemuArch;

/// The version of the [`SavedHotplug`] file format this crate writes (it reads this one and
/// version 1, which had no `root_port_slots` and no `pending_removals`).
pub const SAVED_HOTPLUG_VERSION: u32 = 2;

/// A VM's hotplug state as [`crate::Vm::save`] writes it next to the migration state
/// (`<state>.hotplug.json`, mode 0600) and [`crate::Vm::restore`] reads it back: the arch
/// backend's bridges (with their occupied slots) and the [`HotplugState`].
///
/// The file is JSON (field names as below; `device` is [`Device`]'s own serde form, the
/// same as in a VM spec):
///
/// ```text
/// {"version": 2,
///  "bridges": [{"id": "pci-bridge-0", "bridge_type": "pci", "addr": 2, "devices": {"1": "virtio-d0"}}],
///  "state": {
///    "root_ports": ["rp0", "rp1"], "root_port_slots": {"rp0": 5, "rp1": 6},
///    "port_users": {"rp0": "virtio-d1"},
///    "plugged": {"virtio-d1": {"id": "virtio-d1", "kind": "virtio-blk",
///                              "location": {"type": "root-port", "port": "rp0"},
///                              "pci_path": [5, 0],
///                              "removal": [{"command": "blockdev-del", "arguments": {…}}, …],
///                              "virtio_mem": false, "device": {…}}},
///    "pending_removals": {},
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
        for plugged in state.records_in_order() {
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
        if !(1..=SAVED_HOTPLUG_VERSION).contains(&saved.version) {
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
    /// the hot-plugged devices (those with a pending removal too: QEMU still had them) to its
    /// configuration in plug order (cold-plugged, same ids, bus and addr) and gives its arch
    /// backend the saved bridges. Returns the state the restored VM starts with.
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
            .devices_in_order()
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
            .devices_in_order()
            .map(|p| p.device.clone())
            .collect();
        assembled.config.devices.extend(devices);
        assembled.arch.set_bridges(self.bridges);
        Ok(self.state)
    }
}
