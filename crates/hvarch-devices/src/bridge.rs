//! PCI topology devices: PCI bridges ([`PciBridge`]: `pci-bridge`, `pcie-pci-bridge`) and
//! PCI Express root ports ([`PcieRootPort`]).
//!
//! Both are cold-plugged in practice: QEMU refuses `device_add` on `pcie.0` ("Bus 'pcie.0'
//! does not support hotplugging"). Their QMP rendering stays available for buses that do
//! accept them.

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Error, Result};
use crate::id::check_id;
use crate::part::{Part, PartKind};
use crate::pci::PciAddr;
use crate::props::Props;

/// Which bridge device a [`PciBridge`] is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BridgeType {
    /// `pci-bridge`: a conventional PCI-to-PCI bridge (Kata's default on `virt`, `q35`, `pc`),
    /// with a chassis number and an SHPC hotplug controller.
    #[default]
    PciBridge,
    /// `pcie-pci-bridge`: a PCIe-to-PCI bridge; no chassis, SHPC or resource reservations.
    PcieBridge,
}

impl BridgeType {
    fn driver(self) -> &'static str {
        match self {
            BridgeType::PciBridge => "pci-bridge",
            BridgeType::PcieBridge => "pcie-pci-bridge",
        }
    }
}

/// A PCI bridge (`pci-bridge` or `pcie-pci-bridge`): a bus of 31 hot-pluggable slots.
///
/// ```
/// use hvarch_devices::bridge::PciBridge;
/// use hvarch_devices::pci::PciAddr;
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let mut bridge = PciBridge::pci("pci-bridge-0", "pcie.0", 1);
/// bridge.shpc = Some(true);
/// bridge.addr = Some(PciAddr::slot_only(2).unwrap());
/// assert_eq!(
///     bridge.parts().unwrap()[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-device", "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=02"],
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciBridge {
    /// The device id (the bus its devices name).
    pub id: String,
    /// `pci-bridge` (default) or `pcie-pci-bridge`.
    #[serde(default)]
    pub bridge_type: BridgeType,
    /// The parent bus: `pcie.0` on `q35` and `virt`, `pci.0` on `pc`.
    pub bus: String,
    /// `pci-bridge` only, required there: the chassis number (1 to 255, unique per bridge).
    #[serde(default)]
    pub chassis_nr: Option<u8>,
    /// `pci-bridge` only: the SHPC hotplug controller (`shpc=`; QEMU's default on).
    #[serde(default)]
    pub shpc: Option<bool>,
    /// The address on the parent bus.
    #[serde(default)]
    pub addr: Option<PciAddr>,
    /// `pci-bridge` only: bus numbers to reserve behind the bridge (`bus-reserve=`).
    #[serde(default)]
    pub bus_reserve: Option<u32>,
    /// `pci-bridge` only: I/O space to reserve, in bytes (`io-reserve=`).
    #[serde(default)]
    pub io_reserve: Option<u64>,
    /// `pci-bridge` only: non-prefetchable memory to reserve, in bytes (`mem-reserve=`).
    #[serde(default)]
    pub mem_reserve: Option<u64>,
    /// `pci-bridge` only: 32-bit prefetchable memory to reserve, in bytes (`pref32-reserve=`;
    /// excludes `pref64_reserve`).
    #[serde(default)]
    pub pref32_reserve: Option<u64>,
    /// `pci-bridge` only: 64-bit prefetchable memory to reserve, in bytes (`pref64-reserve=`).
    #[serde(default)]
    pub pref64_reserve: Option<u64>,
    /// Only `Some("")`, an explicit empty `romfile=` (no option ROM), is accepted: QEMU 10.0.2
    /// aborts on an assertion in `pci_register_bar` when a bridge or root port is given a ROM
    /// file, so govmm's `romfile=efi-virtio.rom` is refused here.
    #[serde(default)]
    pub romfile: Option<String>,
}

impl PciBridge {
    /// A `pci-bridge` `id` on `bus` with chassis number `chassis_nr`.
    pub fn pci(id: impl Into<String>, bus: impl Into<String>, chassis_nr: u8) -> Self {
        PciBridge {
            id: id.into(),
            bridge_type: BridgeType::PciBridge,
            bus: bus.into(),
            chassis_nr: Some(chassis_nr),
            shpc: None,
            addr: None,
            bus_reserve: None,
            io_reserve: None,
            mem_reserve: None,
            pref32_reserve: None,
            pref64_reserve: None,
            romfile: None,
        }
    }

    /// A `pcie-pci-bridge` `id` on `bus`.
    pub fn pcie(id: impl Into<String>, bus: impl Into<String>) -> Self {
        PciBridge {
            bridge_type: BridgeType::PcieBridge,
            chassis_nr: None,
            ..PciBridge::pci(id, bus, 0)
        }
    }
}

impl QemuDevice for PciBridge {
    fn kind(&self) -> &'static str {
        self.bridge_type.driver()
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        check_id(what, "bus", &self.bus)?;
        match self.bridge_type {
            BridgeType::PciBridge => match self.chassis_nr {
                None => {
                    return Err(Error::MissingField {
                        what,
                        field: "chassis_nr",
                    })
                }
                Some(0) => {
                    return Err(invalid(
                        what,
                        "chassis_nr",
                        0,
                        "QEMU needs a unique chassis number of at least 1",
                    ))
                }
                Some(_) => {}
            },
            BridgeType::PcieBridge => {
                let pci_bridge_only = [
                    ("chassis_nr", self.chassis_nr.is_some()),
                    ("shpc", self.shpc.is_some()),
                    ("bus_reserve", self.bus_reserve.is_some()),
                    ("io_reserve", self.io_reserve.is_some()),
                    ("mem_reserve", self.mem_reserve.is_some()),
                    ("pref32_reserve", self.pref32_reserve.is_some()),
                    ("pref64_reserve", self.pref64_reserve.is_some()),
                ];
                if let Some((field, _)) = pci_bridge_only.into_iter().find(|&(_, set)| set) {
                    return Err(invalid(
                        what,
                        field,
                        "set",
                        "applies to pci-bridge only (pcie-pci-bridge has no such property)",
                    ));
                }
            }
        }
        check_pref_reserves(what, self.pref32_reserve, self.pref64_reserve)?;
        check_bridge_romfile(what, self.romfile.as_deref())
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        emit(Part::device(
            self.bridge_type.driver(),
            Props::new()
                .with("bus", self.bus.as_str())
                .with("id", self.id.as_str())
                .opt("chassis_nr", self.chassis_nr)
                .opt("shpc", self.shpc)
                .opt("addr", self.addr)
                .opt("bus-reserve", self.bus_reserve)
                .opt_size("io-reserve", self.io_reserve)
                .opt_size("mem-reserve", self.mem_reserve)
                .opt_size("pref32-reserve", self.pref32_reserve)
                .opt_size("pref64-reserve", self.pref64_reserve)
                .opt("romfile", self.romfile.as_deref()),
        ))
    }
}

/// Refuses `pref32_reserve` together with `pref64_reserve` on a bridge or root port (the two
/// exclude each other).
fn check_pref_reserves(what: &'static str, pref32: Option<u64>, pref64: Option<u64>) -> Result<()> {
    if pref32.is_some() && pref64.is_some() {
        return Err(Error::Conflict {
            what,
            field: "pref32_reserve",
            other: "pref64_reserve",
        });
    }
    Ok(())
}

/// Refuses a non-empty `romfile` on a bridge or root port (QEMU 10 aborts on it).
fn check_bridge_romfile(what: &'static str, romfile: Option<&str>) -> Result<()> {
    match romfile {
        Some(file) if !file.is_empty() => Err(invalid(
            what,
            "romfile",
            file,
            "bridges and root ports take no option ROM (QEMU aborts on one); \
             leave it unset or empty",
        )),
        _ => Ok(()),
    }
}

fn default_root_bus() -> String {
    "pcie.0".to_owned()
}

/// A PCI Express root port (`pcie-root-port`): one hot-pluggable slot on `pcie.0`.
///
/// ```
/// use hvarch_devices::bridge::PcieRootPort;
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let mut port = PcieRootPort::new("rp0");
/// port.chassis = 1;
/// port.mem_reserve = Some(64 << 20);
/// assert_eq!(
///     port.parts().unwrap()[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=0,multifunction=off,mem-reserve=64M"],
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcieRootPort {
    /// The device id (the bus the device plugged into it names).
    pub id: String,
    /// The parent bus (default `pcie.0`).
    #[serde(default = "default_root_bus")]
    pub bus: String,
    /// The chassis number (`chassis=`); each chassis/slot pair must be unique.
    #[serde(default)]
    pub chassis: u8,
    /// The slot number (`slot=`).
    #[serde(default)]
    pub slot: u16,
    /// `multifunction=on`: further functions of the same slot follow at `addr` `.1`, `.2`, ….
    #[serde(default)]
    pub multifunction: bool,
    /// The address on the parent bus.
    #[serde(default)]
    pub addr: Option<PciAddr>,
    /// Bus numbers to reserve behind the port (`bus-reserve=`).
    #[serde(default)]
    pub bus_reserve: Option<u32>,
    /// 64-bit prefetchable memory to reserve, in bytes (`pref64-reserve=`).
    #[serde(default)]
    pub pref64_reserve: Option<u64>,
    /// 32-bit prefetchable memory to reserve, in bytes (`pref32-reserve=`; excludes
    /// `pref64_reserve`).
    #[serde(default)]
    pub pref32_reserve: Option<u64>,
    /// Non-prefetchable memory to reserve, in bytes (`mem-reserve=`).
    #[serde(default)]
    pub mem_reserve: Option<u64>,
    /// I/O space to reserve, in bytes (`io-reserve=`).
    #[serde(default)]
    pub io_reserve: Option<u64>,
    /// Only `Some("")`, an explicit empty `romfile=` (no option ROM), is accepted: QEMU 10.0.2
    /// aborts on an assertion in `pci_register_bar` when a bridge or root port is given a ROM
    /// file, so govmm's `romfile=efi-virtio.rom` is refused here.
    #[serde(default)]
    pub romfile: Option<String>,
}

impl PcieRootPort {
    /// A root port `id` on `pcie.0`, chassis 0, slot 0.
    pub fn new(id: impl Into<String>) -> Self {
        PcieRootPort {
            id: id.into(),
            bus: default_root_bus(),
            chassis: 0,
            slot: 0,
            multifunction: false,
            addr: None,
            bus_reserve: None,
            pref64_reserve: None,
            pref32_reserve: None,
            mem_reserve: None,
            io_reserve: None,
            romfile: None,
        }
    }
}

impl QemuDevice for PcieRootPort {
    fn kind(&self) -> &'static str {
        "pcie-root-port"
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        check_id(what, "bus", &self.bus)?;
        check_pref_reserves(what, self.pref32_reserve, self.pref64_reserve)?;
        check_bridge_romfile(what, self.romfile.as_deref())
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        let mut props = Props::starting_with("driver", "pcie-root-port");
        props
            .push("id", self.id.as_str())
            .push("bus", self.bus.as_str())
            .push("chassis", self.chassis)
            .push("slot", self.slot)
            .push_opt("addr", self.addr)
            .push("multifunction", self.multifunction)
            .push_opt("bus-reserve", self.bus_reserve)
            .push_size("pref64-reserve", self.pref64_reserve)
            .push_size("pref32-reserve", self.pref32_reserve)
            .push_size("mem-reserve", self.mem_reserve)
            .push_size("io-reserve", self.io_reserve)
            .push_opt("romfile", self.romfile.as_deref());
        emit(Part::new(PartKind::Device, props))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{args, bad_id, id, pci_addr, short_text, Cases};
    use proptest::prelude::*;
    use serde_json::json;

    fn slot(n: u8) -> Option<PciAddr> {
        Some(PciAddr::slot_only(n).unwrap())
    }

    /// govmm's BridgeDevice reference cases (kata-go.md §2.3). Deliberate differences:
    /// `bus=pcie.0` instead of `/pci-bus/pcie.0` (QEMU 10 refuses that path: "Device
    /// 'pci-bus' not found"); `addr=1e` instead of `addr=ff`, which is not a PCI slot (slots
    /// are 0 to 0x1f; 0x1f holds q35's LPC); no `romfile=efi-virtio.rom`, on which QEMU 10
    /// aborts for any bridge (see [`bridge_romfile_is_refused`]).
    #[test]
    fn govmm_bridge_reference_cases() {
        let mut bridge = PciBridge::pci("mybridge", "pcie.0", 5);
        bridge.shpc = Some(true);
        bridge.addr = slot(0x1e);
        assert_eq!(
            args(&bridge),
            [
                "-device",
                "pci-bridge,bus=pcie.0,id=mybridge,chassis_nr=5,shpc=on,addr=1e"
            ]
        );
        let mut bridge = PciBridge::pcie("mybridge", "pcie.0");
        bridge.addr = slot(0x1e);
        assert_eq!(
            args(&bridge),
            ["-device", "pcie-pci-bridge,bus=pcie.0,id=mybridge,addr=1e"]
        );
    }

    /// QEMU 10.0.2 aborts (`pci_register_bar: Assertion ... failed`) when a pci-bridge,
    /// pcie-pci-bridge or pcie-root-port gets a ROM file, so only an empty `romfile=` passes.
    #[test]
    fn bridge_romfile_is_refused() {
        let mut bridge = PciBridge::pci("b", "pcie.0", 1);
        bridge.romfile = Some("efi-virtio.rom".into());
        let msg = bridge.validate().unwrap_err().to_string();
        assert!(msg.contains("`romfile`"), "{msg}");
        bridge.romfile = Some(String::new());
        assert_eq!(
            args(&bridge),
            [
                "-device",
                "pci-bridge,bus=pcie.0,id=b,chassis_nr=1,romfile="
            ]
        );
        let port = PcieRootPort {
            romfile: Some("efi-virtio.rom".into()),
            ..PcieRootPort::new("rp0")
        };
        assert!(port.parts().unwrap_err().to_string().contains("`romfile`"));
    }

    /// govmm HEAD's reservations case. Differences besides bus/addr/romfile (above): sizes in
    /// QEMU's upper-case suffix form (`4K`, `1M`).
    #[test]
    fn govmm_head_bridge_reservations() {
        let mut bridge = PciBridge::pci("mybridge", "pcie.0", 5);
        bridge.shpc = Some(false);
        bridge.addr = slot(0x1e);
        bridge.io_reserve = Some(4 << 10);
        bridge.mem_reserve = Some(1 << 20);
        bridge.pref64_reserve = Some(1 << 20);
        assert_eq!(
            args(&bridge),
            [
                "-device",
                "pci-bridge,bus=pcie.0,id=mybridge,chassis_nr=5,shpc=off,addr=1e,\
                 io-reserve=4K,mem-reserve=1M,pref64-reserve=1M"
            ]
        );
    }

    /// Kata's arm64 default bridge. Differences: no empty `romfile=` (Kata's `romFile` was
    /// `""`); `addr=02` (the same slot in QEMU's hex form).
    #[test]
    fn kata_arm64_default_bridge() {
        let mut bridge = PciBridge::pci("pci-bridge-0", "pcie.0", 1);
        bridge.shpc = Some(true);
        bridge.addr = slot(2);
        assert_eq!(
            args(&bridge),
            [
                "-device",
                "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=02"
            ]
        );
    }

    /// govmm's PCIeRootPortDevice reference cases. Differences: numbers in decimal
    /// (`chassis=0`, `slot=1`, `bus-reserve=3`) and `addr` in QEMU's `02` form, where govmm
    /// wrote `0x…`; QEMU reads both. `addr` is emitted whenever set (govmm: only with
    /// multifunction). No `romfile=efi-virtio.rom`: QEMU 10 aborts on it (see
    /// [`bridge_romfile_is_refused`]).
    #[test]
    fn govmm_root_port_reference_cases() {
        assert_eq!(
            args(&PcieRootPort::new("rp1")),
            [
                "-device",
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=0,slot=0,multifunction=off"
            ]
        );
        let port = PcieRootPort {
            slot: 1,
            addr: slot(2),
            multifunction: true,
            bus_reserve: Some(3),
            pref64_reserve: Some(16 << 30),
            mem_reserve: Some(1 << 30),
            io_reserve: Some(512 << 20),
            ..PcieRootPort::new("rp2")
        };
        assert_eq!(
            args(&port),
            [
                "-device",
                "pcie-root-port,id=rp2,bus=pcie.0,chassis=0,slot=1,addr=02,multifunction=on,\
                 bus-reserve=3,pref64-reserve=16G,mem-reserve=1G,io-reserve=512M"
            ]
        );
    }

    #[test]
    fn qmp_and_json_renderings() {
        let port = PcieRootPort {
            chassis: 2,
            slot: 1,
            pref64_reserve: Some(16 << 30),
            ..PcieRootPort::new("rp2")
        };
        let part = &port.parts().unwrap()[0];
        assert_eq!(
            part.render(Syntax::Json, &mut NoFds).unwrap(),
            r#"{"driver":"pcie-root-port","id":"rp2","bus":"pcie.0","chassis":2,"slot":1,"multifunction":false,"pref64-reserve":17179869184}"#
        );
        let add = part.qmp_add(&mut NoFds).unwrap();
        assert_eq!(add.command, "device_add");
        assert_eq!(
            add.arguments,
            json!({"driver": "pcie-root-port", "id": "rp2", "bus": "pcie.0", "chassis": 2,
                   "slot": 1, "multifunction": false, "pref64-reserve": 17179869184u64})
        );
        let mut bridge = PciBridge::pci("br1", "pci.0", 3);
        bridge.shpc = Some(true);
        bridge.bus_reserve = Some(1);
        assert_eq!(
            bridge.parts().unwrap()[0]
                .qmp_add(&mut NoFds)
                .unwrap()
                .arguments,
            json!({"driver": "pci-bridge", "bus": "pci.0", "id": "br1", "chassis_nr": 3,
                   "shpc": true, "bus-reserve": 1})
        );
    }

    #[test]
    fn errors_name_the_field() {
        let mut bridge = PciBridge::pci("b", "pcie.0", 0);
        assert!(bridge
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`chassis_nr`"));
        bridge.chassis_nr = None;
        assert_eq!(
            bridge.validate().unwrap_err(),
            Error::MissingField {
                what: "pci-bridge",
                field: "chassis_nr"
            }
        );
        bridge.chassis_nr = Some(1);
        bridge.pref32_reserve = Some(1 << 20);
        bridge.pref64_reserve = Some(1 << 20);
        assert_eq!(
            bridge.validate().unwrap_err(),
            Error::Conflict {
                what: "pci-bridge",
                field: "pref32_reserve",
                other: "pref64_reserve"
            }
        );
        bridge.bus = "/pci-bus/pcie.0".into();
        bridge.pref32_reserve = None;
        assert!(bridge.validate().unwrap_err().to_string().contains("bus"));

        let mut pcie = PciBridge::pcie("b", "pcie.0");
        pcie.validate().unwrap();
        pcie.io_reserve = Some(4096);
        let msg = pcie.validate().unwrap_err().to_string();
        assert!(
            msg.contains("pcie-pci-bridge") && msg.contains("`io_reserve`"),
            "{msg}"
        );
        pcie.io_reserve = None;
        pcie.shpc = Some(false);
        assert!(pcie.validate().unwrap_err().to_string().contains("`shpc`"));

        let port = PcieRootPort {
            pref32_reserve: Some(1 << 20),
            pref64_reserve: Some(1 << 30),
            ..PcieRootPort::new("rp0")
        };
        assert_eq!(
            port.parts().unwrap_err(),
            Error::Conflict {
                what: "pcie-root-port",
                field: "pref32_reserve",
                other: "pref64_reserve"
            }
        );
        let port = PcieRootPort::new("rp 0");
        assert!(port.validate().unwrap_err().to_string().contains("id"));
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = r#"
            id = "rp0"
            chassis = 1
            slot = 2
            addr = "04.1"
            pref64_reserve = 2147483648
        "#;
        let port: PcieRootPort = toml::from_str(text).unwrap();
        assert_eq!(port.bus, "pcie.0");
        assert_eq!(port.addr, Some(PciAddr::new(4, 1).unwrap()));
        let again: PcieRootPort = toml::from_str(&toml::to_string(&port).unwrap()).unwrap();
        assert_eq!(again, port);
        assert!(toml::from_str::<PcieRootPort>(&format!("{text}\nport = 3")).is_err());

        let text = r#"
            id = "pci-bridge-0"
            bridge_type = "pcie-bridge"
            bus = "pcie.0"
            addr = "02"
        "#;
        let bridge: PciBridge = toml::from_str(text).unwrap();
        assert_eq!(bridge.bridge_type, BridgeType::PcieBridge);
        let again: PciBridge = toml::from_str(&toml::to_string(&bridge).unwrap()).unwrap();
        assert_eq!(again, bridge);
        assert!(toml::from_str::<PciBridge>(&format!("{text}\nchassis = 1")).is_err());
        let device: crate::Device =
            toml::from_str(&format!("type = \"pci-bridge\"\n{}", text.trim_start())).unwrap();
        assert_eq!(device.kind(), "pcie-pci-bridge");
        let device: crate::Device =
            toml::from_str("type = \"pcie-root-port\"\nid = \"rp1\"\n").unwrap();
        assert_eq!(device.id(), Some("rp1"));
    }

    /// Bus, I/O and memory reservations: any sizes, at most one of the prefetchable ones.
    #[allow(clippy::type_complexity)]
    fn reserves() -> impl Strategy<
        Value = (
            Option<u32>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
        ),
    > {
        let pref = prop_oneof![
            Just((None, None)),
            any::<u64>().prop_map(|p| (Some(p), None)),
            any::<u64>().prop_map(|p| (None, Some(p))),
        ];
        (
            any::<Option<u32>>(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            pref,
        )
            .prop_map(|(bus, io, mem, (pref32, pref64))| (bus, io, mem, pref32, pref64))
    }

    /// No option ROM: unset or explicitly empty.
    fn no_rom() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(Just(String::new()))
    }

    fn pci_bridge() -> impl Strategy<Value = PciBridge> {
        let pci =
            (1u8.., any::<Option<bool>>(), reserves()).prop_map(|(chassis, shpc, r)| PciBridge {
                chassis_nr: Some(chassis),
                shpc,
                bus_reserve: r.0,
                io_reserve: r.1,
                mem_reserve: r.2,
                pref32_reserve: r.3,
                pref64_reserve: r.4,
                ..PciBridge::pci("", "", 1)
            });
        let pcie = Just(PciBridge::pcie("", ""));
        (
            prop_oneof![pci, pcie],
            id(),
            id(),
            proptest::option::of(pci_addr()),
            no_rom(),
        )
            .prop_map(|(bridge, id, bus, addr, romfile)| PciBridge {
                id,
                bus,
                addr,
                romfile,
                ..bridge
            })
    }

    fn root_port() -> impl Strategy<Value = PcieRootPort> {
        (
            (id(), id(), any::<u8>(), any::<u16>(), any::<bool>()),
            (proptest::option::of(pci_addr()), reserves(), no_rom()),
        )
            .prop_map(
                |((id, bus, chassis, slot, multifunction), (addr, r, romfile))| PcieRootPort {
                    bus,
                    chassis,
                    slot,
                    multifunction,
                    addr,
                    bus_reserve: r.0,
                    io_reserve: r.1,
                    mem_reserve: r.2,
                    pref32_reserve: r.3,
                    pref64_reserve: r.4,
                    romfile,
                    ..PcieRootPort::new(id)
                },
            )
    }

    /// `bridge` as a `pci-bridge` with a chassis number, so pci-bridge settings are valid.
    fn as_pci(bridge: &mut PciBridge) {
        bridge.bridge_type = BridgeType::PciBridge;
        bridge.chassis_nr = bridge.chassis_nr.or(Some(1));
    }

    #[test]
    fn bridge_parts_round_trip_and_faults_name_their_field() {
        Cases::new(pci_bridge())
            .fault("id", bad_id(), |b, v| b.id = v)
            .fault("bus", bad_id(), |b, v| b.bus = v)
            .fault("chassis_nr", Just(None), |b, v| {
                as_pci(b);
                b.chassis_nr = v;
            })
            .fault("chassis_nr", Just(Some(0)), |b, v| {
                as_pci(b);
                b.chassis_nr = v;
            })
            .fault("shpc", any::<bool>(), |b, v| {
                *b = PciBridge {
                    bridge_type: BridgeType::PcieBridge,
                    shpc: Some(v),
                    chassis_nr: None,
                    ..PciBridge::pci(b.id.clone(), b.bus.clone(), 1)
                }
            })
            .fault("pref32_reserve", any::<(u64, u64)>(), |b, (p32, p64)| {
                as_pci(b);
                (b.pref32_reserve, b.pref64_reserve) = (Some(p32), Some(p64));
            })
            .fault("romfile", short_text(64), |b, v| b.romfile = Some(v))
            .check();
    }

    #[test]
    fn root_port_parts_round_trip_and_faults_name_their_field() {
        Cases::new(root_port())
            .fault("id", bad_id(), |p, v| p.id = v)
            .fault("bus", bad_id(), |p, v| p.bus = v)
            .fault("pref32_reserve", any::<(u64, u64)>(), |p, (p32, p64)| {
                (p.pref32_reserve, p.pref64_reserve) = (Some(p32), Some(p64));
            })
            .fault("romfile", short_text(64), |p, v| p.romfile = Some(v))
            .check();
    }
}
