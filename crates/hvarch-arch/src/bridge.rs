//! PCI/PCIe/CCW bridges and their hotplug slots (Kata's `types.Bridge`).
//!
//! A bridge offers [`PCI_BRIDGE_CAPACITY`] slots for hot-plugged devices, numbered from 1:
//! slot 0 is never handed out. Allocation is first-free, so a slot freed by an unplug is the
//! next one reused. [`Bridges`] holds a VM's bridges and picks one with room, as Kata's
//! `addDeviceToBridge` does; [`PciPath`] is the guest-side path of a device (`"02/01"`) a guest
//! agent needs to find it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ArchError, Result};

/// Slots a PCI or PCIe bridge offers to hot-plugged devices (1..=30).
pub const PCI_BRIDGE_CAPACITY: u32 = 30;
/// Slots a CCW bridge (channel subsystem) offers.
pub const CCW_BRIDGE_CAPACITY: u32 = 0xffff;

/// The kind of a bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BridgeType {
    /// A PCI bridge (`pci-bridge`); also what arm64 `virt` uses since Kata runtime#3017.
    Pci,
    /// A PCIe-to-PCI bridge (`pcie-pci-bridge`).
    Pcie,
    /// An s390x channel subsystem.
    Ccw,
}

impl BridgeType {
    /// Kata's name (`pci`, `pcie`, `ccw`), used in bridge ids.
    pub fn as_str(self) -> &'static str {
        match self {
            BridgeType::Pci => "pci",
            BridgeType::Pcie => "pcie",
            BridgeType::Ccw => "ccw",
        }
    }

    /// How many devices a bridge of this type takes.
    pub fn capacity(self) -> u32 {
        match self {
            BridgeType::Pci | BridgeType::Pcie => PCI_BRIDGE_CAPACITY,
            BridgeType::Ccw => CCW_BRIDGE_CAPACITY,
        }
    }
}

/// One bridge and the devices plugged into it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    /// The bridge's id (`pci-bridge-0`).
    pub id: String,
    /// Its type.
    pub bridge_type: BridgeType,
    /// Its own slot on the root bus (set when it is added to the VM; 0 = not yet placed).
    pub addr: u32,
    /// Slot → device id.
    pub devices: BTreeMap<u32, String>,
}

impl Bridge {
    /// An empty bridge.
    pub fn new(bridge_type: BridgeType, id: impl Into<String>, addr: u32) -> Self {
        Bridge {
            id: id.into(),
            bridge_type,
            addr,
            devices: BTreeMap::new(),
        }
    }

    /// The number of slots.
    pub fn capacity(&self) -> u32 {
        self.bridge_type.capacity()
    }

    /// The slot device `id` holds, if any.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.devices
            .iter()
            .find_map(|(slot, dev)| (dev == id).then_some(*slot))
    }

    /// Plugs device `id` into the first free slot (from 1) and returns the slot. An id that
    /// already holds a slot here is refused ([`ArchError::DeviceHasSlot`]).
    pub fn add_device(&mut self, id: &str) -> Result<u32> {
        self.refuse_held(id)?;
        let slot = (1..=self.capacity())
            .find(|s| !self.devices.contains_key(s))
            .ok_or(ArchError::BridgeFull {
                bridge: self.id.clone(),
            })?;
        self.devices.insert(slot, id.to_owned());
        Ok(slot)
    }

    fn refuse_held(&self, id: &str) -> Result<()> {
        match self.slot_of(id) {
            Some(slot) => Err(ArchError::DeviceHasSlot {
                device: id.to_owned(),
                bridge: self.id.clone(),
                slot,
            }),
            None => Ok(()),
        }
    }

    /// Unplugs device `id`; returns the slot it had.
    pub fn remove_device(&mut self, id: &str) -> Result<u32> {
        let slot = self.slot_of(id).ok_or_else(|| ArchError::NotOnBridge {
            device: id.to_owned(),
        })?;
        self.devices.remove(&slot);
        Ok(slot)
    }

    /// The CCW device number QEMU takes for slot `addr`: `fe.<bridge addr hex>.<addr %04x>`.
    pub fn ccw_devno(&self, addr: u32) -> Result<String> {
        self.require_ccw()?;
        Ok(format!("fe.{:x}.{addr:04x}", self.addr))
    }

    /// The CCW address a guest agent sees for slot `addr`: `0.<bridge addr hex>.<addr %04x>`.
    pub fn ccw_guest_address(&self, addr: u32) -> Result<String> {
        self.require_ccw()?;
        Ok(format!("0.{:x}.{addr:04x}", self.addr))
    }

    fn require_ccw(&self) -> Result<()> {
        if self.bridge_type == BridgeType::Ccw {
            Ok(())
        } else {
            Err(ArchError::NotCcw {
                bridge: self.id.clone(),
            })
        }
    }
}

/// Where a hot-plugged device went: the bridge, the slot, and the text forms QEMU and the
/// guest need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeSlot {
    /// The bridge's id (the device's `bus=`).
    pub bridge_id: String,
    /// The bridge's type.
    pub bridge_type: BridgeType,
    /// The bridge's own slot on the root bus.
    pub bridge_addr: u32,
    /// The device's slot on the bridge.
    pub slot: u32,
}

impl BridgeSlot {
    /// The address as Kata formats it: `%02x` for PCI/PCIe (`"01"`), `%04x` for CCW.
    pub fn addr_text(&self) -> String {
        match self.bridge_type {
            BridgeType::Ccw => format!("{:04x}", self.slot),
            _ => format!("{:02x}", self.slot),
        }
    }

    /// The guest PCI path `<bridge slot>/<device slot>` (PCI/PCIe bridges only).
    pub fn pci_path(&self) -> Result<PciPath> {
        if self.bridge_type == BridgeType::Ccw {
            return Err(ArchError::NotPci {
                bridge: self.bridge_id.clone(),
            });
        }
        PciPath::new(&[self.bridge_addr, self.slot])
    }
}

/// A VM's bridges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bridges(Vec<Bridge>);

impl Bridges {
    /// No bridges.
    pub fn new() -> Self {
        Bridges(Vec::new())
    }

    /// Adds a bridge.
    pub fn push(&mut self, bridge: Bridge) {
        self.0.push(bridge);
    }

    /// The bridges in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Bridge> {
        self.0.iter()
    }

    /// The bridges, mutable (to place them).
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Bridge> {
        self.0.iter_mut()
    }

    /// The number of bridges.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Plugs `id` into the first bridge of type `bridge_type` with a free slot. An id that
    /// already holds a slot on any bridge is refused ([`ArchError::DeviceHasSlot`]).
    pub fn add_device(&mut self, id: &str, bridge_type: BridgeType) -> Result<BridgeSlot> {
        if self.0.is_empty() {
            return Err(ArchError::NoBridges);
        }
        for bridge in &self.0 {
            bridge.refuse_held(id)?;
        }
        for bridge in self.0.iter_mut().filter(|b| b.bridge_type == bridge_type) {
            if let Ok(slot) = bridge.add_device(id) {
                return Ok(BridgeSlot {
                    bridge_id: bridge.id.clone(),
                    bridge_type,
                    bridge_addr: bridge.addr,
                    slot,
                });
            }
        }
        Err(ArchError::NoBridgeSlot { bridge_type })
    }

    /// Unplugs `id` from whichever bridge holds it. Succeeds when there are no bridges at all
    /// (as Kata does); fails when bridges exist and none holds `id`.
    pub fn remove_device(&mut self, id: &str) -> Result<()> {
        let mut last = Ok(());
        for bridge in &mut self.0 {
            match bridge.remove_device(id) {
                Ok(_) => return Ok(()),
                Err(e) => last = Err(e),
            }
        }
        last
    }
}

impl From<Vec<Bridge>> for Bridges {
    fn from(bridges: Vec<Bridge>) -> Self {
        Bridges(bridges)
    }
}

/// A guest PCI path: the slot of each bridge from the root bus down, then the device's slot,
/// written `"02/01"` (two hex digits each, as Kata's agent reads it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PciPath(Vec<u32>);

impl PciPath {
    /// The path through `slots` (each at most 0x1f; at least one).
    pub fn new(slots: &[u32]) -> Result<Self> {
        if slots.is_empty() {
            return Err(ArchError::InvalidPciPath {
                path: String::new(),
            });
        }
        if let Some(bad) = slots.iter().find(|s| **s > 0x1f) {
            return Err(ArchError::InvalidPciPath {
                path: format!("slot {bad:#x} exceeds 0x1f"),
            });
        }
        Ok(PciPath(slots.to_vec()))
    }

    /// The slots, root first.
    pub fn slots(&self) -> &[u32] {
        &self.0
    }
}

impl fmt::Display for PciPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, slot) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{slot:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_free_slot_from_one() {
        let mut bridge = Bridge::new(BridgeType::Pci, "pci-bridge-0", 2);
        assert_eq!(bridge.add_device("a").unwrap(), 1);
        assert_eq!(bridge.add_device("b").unwrap(), 2);
        assert_eq!(bridge.remove_device("a").unwrap(), 1);
        assert_eq!(bridge.add_device("c").unwrap(), 1);
        assert_eq!(
            bridge.remove_device("zz").unwrap_err().to_string(),
            "Unable to hot unplug device zz: not present on bridge"
        );
    }

    #[test]
    fn full_bridge_and_no_bridges() {
        let mut bridges = Bridges::new();
        assert_eq!(
            bridges
                .add_device("a", BridgeType::Pci)
                .unwrap_err()
                .to_string(),
            "failed to get available address from bridges"
        );
        assert!(bridges.remove_device("a").is_ok());
        bridges.push(Bridge::new(BridgeType::Pci, "pci-bridge-0", 2));
        for i in 0..30 {
            bridges
                .add_device(&format!("d{i}"), BridgeType::Pci)
                .unwrap();
        }
        assert_eq!(
            bridges
                .add_device("x", BridgeType::Pci)
                .unwrap_err()
                .to_string(),
            "no more bridge slots available"
        );
        assert!(bridges.add_device("x", BridgeType::Ccw).is_err());
        assert!(bridges.remove_device("nope").is_err());
    }

    #[test]
    fn an_id_holding_a_slot_gets_no_second_one() {
        let mut bridges: Bridges = vec![
            Bridge::new(BridgeType::Pci, "pci-bridge-0", 2),
            Bridge::new(BridgeType::Pci, "pci-bridge-1", 3),
        ]
        .into();
        assert_eq!(bridges.add_device("blk0", BridgeType::Pci).unwrap().slot, 1);
        assert_eq!(
            bridges
                .add_device("blk0", BridgeType::Pci)
                .unwrap_err()
                .to_string(),
            "device blk0 already holds slot 1 of bridge pci-bridge-0"
        );
        let mut bridge = Bridge::new(BridgeType::Pci, "pci-bridge-2", 4);
        bridge.add_device("blk0").unwrap();
        assert!(matches!(
            bridge.add_device("blk0"),
            Err(ArchError::DeviceHasSlot { slot: 1, .. })
        ));
        // Once freed, the id may take a slot again.
        bridges.remove_device("blk0").unwrap();
        assert_eq!(bridges.add_device("blk0", BridgeType::Pci).unwrap().slot, 1);
    }

    #[test]
    fn addresses_and_paths() {
        let mut bridges: Bridges = vec![Bridge::new(BridgeType::Pci, "pci-bridge-0", 2)].into();
        let slot = bridges.add_device("blk0", BridgeType::Pci).unwrap();
        assert_eq!(slot.addr_text(), "01");
        assert_eq!(slot.pci_path().unwrap().to_string(), "02/01");
        let ccw = Bridge::new(BridgeType::Ccw, "ccw-bridge-0", 0xa);
        assert_eq!(ccw.ccw_devno(1).unwrap(), "fe.a.0001");
        assert_eq!(ccw.ccw_guest_address(1).unwrap(), "0.a.0001");
        assert!(Bridge::new(BridgeType::Pci, "p", 2).ccw_devno(1).is_err());
        assert!(PciPath::new(&[0x20]).is_err());
        assert!(PciPath::new(&[]).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add,
        /// A live device's id again.
        AddAgain(usize),
        Remove(usize),
    }

    proptest! {
        #[test]
        fn slots_are_unique_nonzero_and_bounded(
            nbridges in 1usize..4,
            ops in proptest::collection::vec(
                prop_oneof![
                    3 => Just(Op::Add),
                    1 => (0usize..200).prop_map(Op::AddAgain),
                    1 => (0usize..200).prop_map(Op::Remove),
                ],
                0..250,
            ),
        ) {
            let mut bridges = Bridges::new();
            for i in 0..nbridges {
                bridges.push(Bridge::new(BridgeType::Pci, format!("pci-bridge-{i}"), 2 + i as u32));
            }
            let capacity = nbridges * PCI_BRIDGE_CAPACITY as usize;
            let mut live: Vec<String> = Vec::new();
            let mut next = 0;
            for op in ops {
                match op {
                    Op::Add => {
                        let id = format!("dev{next}");
                        next += 1;
                        match bridges.add_device(&id, BridgeType::Pci) {
                            Ok(slot) => {
                                prop_assert!(live.len() < capacity);
                                prop_assert!((1..=PCI_BRIDGE_CAPACITY).contains(&slot.slot));
                                live.push(id);
                            }
                            Err(_) => prop_assert_eq!(live.len(), capacity),
                        }
                    }
                    Op::AddAgain(i) if !live.is_empty() => {
                        let id = &live[i % live.len()];
                        let refused = matches!(
                            bridges.add_device(id, BridgeType::Pci),
                            Err(ArchError::DeviceHasSlot { .. })
                        );
                        prop_assert!(refused, "{} got a second slot", id);
                    }
                    Op::AddAgain(_) => {}
                    Op::Remove(i) if !live.is_empty() => {
                        let id = live.remove(i % live.len());
                        prop_assert!(bridges.remove_device(&id).is_ok());
                        prop_assert!(bridges.remove_device(&id).is_err());
                    }
                    Op::Remove(_) => {}
                }
                // No slot given twice, never slot 0, every live device placed exactly once.
                let mut placed = 0;
                for bridge in bridges.iter() {
                    prop_assert!(!bridge.devices.contains_key(&0));
                    prop_assert!(bridge.devices.len() <= PCI_BRIDGE_CAPACITY as usize);
                    placed += bridge.devices.len();
                }
                prop_assert_eq!(placed, live.len());
                for id in &live {
                    let slots = bridges
                        .iter()
                        .flat_map(|b| b.devices.values())
                        .filter(|dev| *dev == id)
                        .count();
                    prop_assert_eq!(slots, 1, "{} holds {} slots", id, slots);
                }
            }
        }
    }
}
