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

    /// Plugs device `id` into slot `slot` (a device whose address was chosen elsewhere, e.g.
    /// a CCW device given its `devno`). Refused when the slot is outside 1..=capacity or
    /// holds another device; plugging the same device into its own slot again is a no-op.
    pub fn add_device_at(&mut self, slot: u32, id: &str) -> Result<()> {
        if !(1..=self.capacity()).contains(&slot) {
            return Err(ArchError::SlotTaken {
                bridge: self.id.clone(),
                slot,
                device: id.to_owned(),
                holder: format!("nothing: the bridge's slots are 1 to {}", self.capacity()),
            });
        }
        match self.devices.get(&slot) {
            Some(holder) if holder != id => Err(ArchError::SlotTaken {
                bridge: self.id.clone(),
                slot,
                device: id.to_owned(),
                holder: holder.clone(),
            }),
            _ => {
                self.devices.insert(slot, id.to_owned());
                Ok(())
            }
        }
    }

    /// The CCW device number QEMU takes for slot `addr`: `fe.<bridge addr hex>.<addr %04x>`
    /// (the bridge's address is the subchannel set).
    pub fn ccw_devno(&self, addr: u32) -> Result<String> {
        self.require_ccw()?;
        Ok(ccw_devno(self.addr, addr))
    }

    /// The CCW address a guest agent sees for slot `addr`: `0.<bridge addr hex>.<addr %04x>`.
    pub fn ccw_guest_address(&self, addr: u32) -> Result<String> {
        self.require_ccw()?;
        Ok(ccw_guest_address(self.addr, addr))
    }

    fn require_ccw(&self) -> Result<()> {
        require_ccw(self.bridge_type, &self.id)
    }
}

/// The channel subsystem id QEMU gives virtual CCW devices (`fe` in `fe.0.0001`).
pub const VIRTUAL_CSSID: u32 = 0xfe;

/// `fe.<ssid>.<devno>`: what QEMU's `devno=` takes. (Kata 1.x's network hotplug formatted the
/// slot *text* with `%x`, turning slot `"0001"` into `3030303031`; hvarch formats numbers.)
fn ccw_devno(ssid: u32, slot: u32) -> String {
    format!("{VIRTUAL_CSSID:x}.{ssid:x}.{slot:04x}")
}

/// `0.<ssid>.<devno>`: the bus id the guest sees (`/sys/bus/ccw/devices/0.0.0001`).
fn ccw_guest_address(ssid: u32, slot: u32) -> String {
    format!("0.{ssid:x}.{slot:04x}")
}

fn require_ccw(bridge_type: BridgeType, bridge: &str) -> Result<()> {
    if bridge_type == BridgeType::Ccw {
        Ok(())
    } else {
        Err(ArchError::NotCcw {
            bridge: bridge.to_owned(),
        })
    }
}

/// Whether `text` is 1 to `max` hex digits (no sign, unlike `from_str_radix`).
fn is_hex(text: &str, max: usize) -> bool {
    (1..=max).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Splits a CCW device number `<cssid>.<ssid>.<devno>` (hex) into its three numbers.
fn parse_ccw_devno(devno: &str) -> Option<(u32, u32, u32)> {
    let mut fields = devno.split('.');
    let mut next = || {
        fields
            .next()
            .filter(|f| is_hex(f, 4))
            .and_then(|f| u32::from_str_radix(f, 16).ok())
    };
    let parsed = (next()?, next()?, next()?);
    fields.next().is_none().then_some(parsed)
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

    /// The CCW device number of this slot, `fe.<bridge addr>.<slot %04x>` (CCW bridges only).
    pub fn ccw_devno(&self) -> Result<String> {
        require_ccw(self.bridge_type, &self.bridge_id)?;
        Ok(ccw_devno(self.bridge_addr, self.slot))
    }

    /// The CCW bus id a guest agent finds the device under, `0.<bridge addr>.<slot %04x>`
    /// (CCW bridges only).
    pub fn ccw_guest_address(&self) -> Result<String> {
        require_ccw(self.bridge_type, &self.bridge_id)?;
        Ok(ccw_guest_address(self.bridge_addr, self.slot))
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

    /// Records that device `id` was given CCW device number `devno` elsewhere, so its slot is
    /// not handed out again: the slot on the CCW bridge whose address is `devno`'s subchannel
    /// set. Returns that slot, or `None` when `devno` is not in the virtual channel subsystem
    /// (`fe`) or no CCW bridge serves its subchannel set. A slot held by another device is an
    /// error ([`ArchError::SlotTaken`]); a malformed `devno` is [`ArchError::InvalidDevno`].
    pub fn reserve_ccw_devno(&mut self, devno: &str, id: &str) -> Result<Option<BridgeSlot>> {
        let (cssid, ssid, slot) =
            parse_ccw_devno(devno).ok_or_else(|| ArchError::InvalidDevno {
                devno: devno.to_owned(),
            })?;
        // Slot 0 is never handed out, so a device there cannot collide with one.
        if cssid != VIRTUAL_CSSID || slot == 0 {
            return Ok(None);
        }
        let Some(bridge) = self
            .0
            .iter_mut()
            .find(|b| b.bridge_type == BridgeType::Ccw && b.addr == ssid)
        else {
            return Ok(None);
        };
        bridge.add_device_at(slot, id)?;
        Ok(Some(BridgeSlot {
            bridge_id: bridge.id.clone(),
            bridge_type: BridgeType::Ccw,
            bridge_addr: bridge.addr,
            slot,
        }))
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
///
/// ```
/// use hvarch_arch::bridge::PciPath;
/// let path: PciPath = "02/1f".parse().unwrap();
/// assert_eq!(path.slots(), [2, 0x1f]);
/// assert_eq!(path.to_string(), "02/1f");
/// assert!("02/20".parse::<PciPath>().is_err());
/// ```
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

impl std::str::FromStr for PciPath {
    type Err = ArchError;

    /// Parses `"02/01"` (Kata's `PciPathFromString`): slots of one or two hex digits
    /// separated by `/`, each at most 0x1f.
    fn from_str(text: &str) -> Result<Self> {
        let invalid = || ArchError::InvalidPciPath {
            path: format!("{text:?} is not <slot>/<slot>/… in hex"),
        };
        let slots = text
            .split('/')
            .map(|slot| {
                if !is_hex(slot, 2) {
                    return Err(invalid());
                }
                u32::from_str_radix(slot, 16).map_err(|_| invalid())
            })
            .collect::<Result<Vec<u32>>>()?;
        PciPath::new(&slots)
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

    #[test]
    fn ccw_slots_devnos_and_reservations() {
        let mut bridges: Bridges = vec![
            Bridge::new(BridgeType::Ccw, "ccw-bridge-0", 0),
            Bridge::new(BridgeType::Ccw, "ccw-bridge-1", 1),
        ]
        .into();
        // A devno set elsewhere reserves its slot on the bridge of its subchannel set.
        let reserved = bridges
            .reserve_ccw_devno("fe.1.0002", "user-disk")
            .unwrap()
            .unwrap();
        assert_eq!(
            (reserved.bridge_id.as_str(), reserved.slot),
            ("ccw-bridge-1", 2)
        );
        assert_eq!(reserved.ccw_devno().unwrap(), "fe.1.0002");
        // Same device again: fine; another device: refused, naming both.
        assert!(bridges.reserve_ccw_devno("fe.1.0002", "user-disk").is_ok());
        assert_eq!(
            bridges
                .reserve_ccw_devno("fe.1.0002", "other")
                .unwrap_err()
                .to_string(),
            "Unable to plug device other into slot 2 of bridge ccw-bridge-1: taken by user-disk"
        );
        // Not ours: another channel subsystem, a subchannel set without a bridge, slot 0.
        for devno in ["0.0.0001", "fe.3.0001", "fe.0.0000"] {
            assert_eq!(
                bridges.reserve_ccw_devno(devno, "x").unwrap(),
                None,
                "{devno}"
            );
        }
        for bad in [
            "fe.0",
            "fe.0.1.2",
            "fe..0001",
            "fe.0.zzzz",
            "fe.0.00001",
            "fe.+0.0001",
        ] {
            assert!(matches!(
                bridges.reserve_ccw_devno(bad, "x"),
                Err(ArchError::InvalidDevno { .. })
            ));
        }
        // Allocation on the first bridge starts at slot 1; the guest sees 0.<ssid>.<slot>.
        let slot = bridges.add_device("blk0", BridgeType::Ccw).unwrap();
        assert_eq!(slot.ccw_devno().unwrap(), "fe.0.0001");
        assert_eq!(slot.ccw_guest_address().unwrap(), "0.0.0001");
        assert_eq!(slot.addr_text(), "0001");
        assert!(slot.pci_path().is_err());
        let pci = BridgeSlot {
            bridge_id: "pci-bridge-0".into(),
            bridge_type: BridgeType::Pci,
            bridge_addr: 2,
            slot: 1,
        };
        assert!(pci.ccw_devno().is_err());
        assert!(pci.ccw_guest_address().is_err());
        // Slot numbers outside the bridge are refused.
        let mut bridge = Bridge::new(BridgeType::Pci, "pci-bridge-0", 2);
        assert!(bridge.add_device_at(0, "a").is_err());
        assert!(bridge.add_device_at(31, "a").is_err());
        bridge.add_device_at(30, "a").unwrap();
        assert_eq!(bridge.add_device("b").unwrap(), 1);
    }

    #[test]
    fn pci_paths_parse_kata_text() {
        assert_eq!("02/01".parse::<PciPath>().unwrap().slots(), [2, 1]);
        assert_eq!("1f".parse::<PciPath>().unwrap().slots(), [0x1f]);
        assert_eq!("2/a".parse::<PciPath>().unwrap().to_string(), "02/0a");
        for bad in [
            "", "/", "02/", "/01", "020", "20", "0g", "02//01", "+1", "-1",
        ] {
            assert!(bad.parse::<PciPath>().is_err(), "{bad:?}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add,
        /// A live device's id again.
        AddAgain(usize),
        Remove(usize),
    }

    proptest! {
        /// Any list of 1 to 8 slots of at most 0x1f is a path whose text is two hex digits
        /// per slot joined by `/`, and parses back to the same slots; any slot above 0x1f
        /// is refused.
        #[test]
        fn pci_paths_round_trip(
            slots in proptest::collection::vec(0u32..0x40, 1..8),
        ) {
            let valid = slots.iter().all(|s| *s <= 0x1f);
            match PciPath::new(&slots) {
                Ok(path) => {
                    prop_assert!(valid);
                    let text = path.to_string();
                    let expected: Vec<String> = slots.iter().map(|s| format!("{s:02x}")).collect();
                    prop_assert_eq!(&text, &expected.join("/"));
                    let parsed: PciPath = text.parse().unwrap();
                    prop_assert_eq!(parsed.slots(), slots.as_slice());
                }
                Err(e) => {
                    prop_assert!(!valid);
                    prop_assert!(e.to_string().contains("exceeds 0x1f"), "{}", e);
                }
            }
        }

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
