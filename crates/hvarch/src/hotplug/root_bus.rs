//! The slots QEMU gives the devices of the root PCIe bus, computed from the configuration,
//! so the guest PCI path of a device hot-plugged on a cold-plugged root port (`<port
//! slot>/00`) is known without asking QEMU (`query-pci`) on every hot-plug.
//!
//! QEMU creates the machine's own devices on the root bus first, then the `-device`s in
//! command-line order; a device without `addr` takes the first slot whose function 0 is free
//! (`pci_bus_devfn_available`, counting from the bus's first slot), and a PCI device without
//! `bus` lands on the root bus. This module replays that for the machines whose own devices
//! hvarch knows (`virt`, `q35`, with `-nodefaults` and no VGA) and gives up (`None`: the
//! engine then asks `query-pci` once) on anything it cannot place for certain: another
//! machine, a device driver it cannot classify, an address taken twice. A real-QEMU test
//! checks the computed slots against `query-pci`.

use std::collections::{BTreeMap, BTreeSet};

use hvarch_devices::config::VmConfig;
use hvarch_devices::part::PartKind;
use hvarch_devices::pci::PciAddr;
use hvarch_devices::props::Value;
use hvarch_devices::QemuDevice;

/// The root bus of the PCIe machines (`virt`, `q35`).
const ROOT_BUS: &str = "pcie.0";

/// Functions per slot (`PCI_FUNC_MAX`).
const FUNCTIONS: u32 = 8;

/// Slots on a bus.
const SLOTS: u32 = 32;

/// The devfns (`slot * 8 + function`) the machine's own devices take on its root bus, for
/// the machines hvarch knows.
fn machine_devfns(machine: &str) -> Option<&'static [u32]> {
    let is = |name: &str, versioned: &str| machine == name || machine.starts_with(versioned);
    if is("virt", "virt-") {
        // The host bridge (gpex-root) at 00.0.
        Some(&[0])
    } else if is("q35", "pc-q35-") {
        // The host bridge (mch) at 00.0; ICH9's LPC, AHCI and SMBus at 1f.0, 1f.2, 1f.3.
        Some(&[
            0,
            0x1f * FUNCTIONS,
            0x1f * FUNCTIONS + 2,
            0x1f * FUNCTIONS + 3,
        ])
    } else {
        None
    }
}

/// Whether a device of QEMU driver `driver` is a PCI device (`None`: not known).
fn is_pci(driver: &str) -> Option<bool> {
    const PCI: [&str; 4] = [
        "pcie-root-port",
        "pci-bridge",
        "pcie-pci-bridge",
        "pxb-pcie",
    ];
    const OTHER: [&str; 10] = [
        "virtconsole",
        "virtserialport",
        "scsi-hd",
        "scsi-cd",
        "scsi-generic",
        "pc-dimm",
        "nvdimm",
        "intel-iommu",
        "isa-serial",
        "pvpanic",
    ];
    if driver.ends_with("-pci") || PCI.contains(&driver) {
        Some(true)
    } else if driver.ends_with("-ccw")
        || driver.ends_with("-device")
        || driver.ends_with("-cpu")
        || OTHER.contains(&driver)
    {
        Some(false)
    } else {
        None
    }
}

/// The slot on the root bus of each device with an id there, or `None` when the
/// configuration does not determine them (see the module docs).
pub(super) fn slots(config: &VmConfig) -> Option<BTreeMap<String, u32>> {
    let builtin = machine_devfns(&config.machine.machine_type)?;
    if !config.knobs.nodefaults || config.vga.as_deref().is_some_and(|v| v != "none") {
        return None;
    }
    let mut taken: BTreeSet<u32> = builtin.iter().copied().collect();
    let mut slots = BTreeMap::new();
    for device in &config.devices {
        for part in device.parts().ok()? {
            if part.kind() != PartKind::Device {
                continue;
            }
            let props = part.props();
            let on_root_bus = match props.get_str("bus") {
                Some(bus) => bus == ROOT_BUS,
                None => is_pci(part.implied()?)?,
            };
            if !on_root_bus {
                continue;
            }
            let addr = match props.get("addr") {
                Some(Value::PciAddr(addr)) => Some(*addr),
                Some(Value::Str(text)) => Some(text.parse::<PciAddr>().ok()?),
                Some(_) => return None,
                None => None,
            };
            let devfn = match addr {
                Some(addr) => u32::from(addr.slot()) * FUNCTIONS + u32::from(addr.function()),
                None => (0..SLOTS)
                    .map(|slot| slot * FUNCTIONS)
                    .find(|devfn| !taken.contains(devfn))?,
            };
            if !taken.insert(devfn) {
                // QEMU refuses the second device; nothing to compute.
                return None;
            }
            if let Some(id) = part.id() {
                slots.insert(id.to_owned(), devfn / FUNCTIONS);
            }
        }
    }
    Some(slots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{assemble, GuestArch, VmSpec};
    use hvarch_devices::bridge::PcieRootPort;
    use hvarch_devices::rng::RngDevice;

    /// Kata's default VM on `arch` (`q35` on x86_64) with `root_ports` root ports.
    fn config(arch: GuestArch, root_ports: u32) -> VmConfig {
        let machine = if arch == GuestArch::X86_64 {
            "q35"
        } else {
            "virt"
        };
        let spec: VmSpec = toml::from_str(&format!(
            "id = 'slots'\narch = '{arch}'\nhost_memory_mb = 8192\nhost_cpus = 4\n\
             [hypervisor]\nmachine_type = '{machine}'\npcie_root_ports = {root_ports}\n\
             kernel_path = '/k'\ninitrd_path = '/i'\n"
        ))
        .expect("spec");
        assemble(&spec).expect("assemble").config
    }

    #[test]
    fn kata_defaults_on_virt_and_q35() {
        // Host bridge 00, virtio-serial 01, pci-bridge-0 at its own 02, virtio-scsi 03,
        // virtio-rng 04, then the root ports (QEMU 10 answers the same in the real-QEMU test).
        for arch in [GuestArch::Aarch64, GuestArch::X86_64] {
            let slots = slots(&config(arch, 2)).expect("determined");
            assert_eq!(slots["serial0"], 1, "{arch}");
            assert_eq!(slots["pci-bridge-0"], 2, "{arch}");
            assert_eq!(slots["rp0"], 5, "{arch}");
            assert_eq!(slots["rp1"], 6, "{arch}");
            assert!(!slots.contains_key("console0"), "not a PCI device");
        }
    }

    #[test]
    fn explicit_addresses_are_skipped_by_later_devices() {
        let mut config = config(GuestArch::Aarch64, 0);
        let mut port = PcieRootPort::new("rpx");
        port.addr = Some(PciAddr::slot_only(5).unwrap());
        config.devices.push(port.into());
        let mut rp = PcieRootPort::new("rpy");
        rp.bus = ROOT_BUS.into();
        config.devices.push(rp.into());
        let slots = slots(&config).expect("determined");
        assert_eq!((slots["rpx"], slots["rpy"]), (5, 6));
    }

    #[test]
    fn what_cannot_be_known_is_none() {
        let mut other = config(GuestArch::Aarch64, 1);
        other.machine.machine_type = "sbsa-ref".into();
        assert_eq!(slots(&other), None, "unknown machine");

        let mut defaults = config(GuestArch::Aarch64, 1);
        defaults.knobs.nodefaults = false;
        assert_eq!(slots(&defaults), None, "QEMU's default devices");

        let mut vga = config(GuestArch::X86_64, 1);
        vga.vga = Some("std".into());
        assert_eq!(slots(&vga), None, "a VGA device");

        // Two devices asking for the same address.
        let mut twice = config(GuestArch::Aarch64, 1);
        let mut rng = RngDevice::new("rng1", "rng0");
        rng.addr = Some(PciAddr::slot_only(2).unwrap());
        twice.devices.push(rng.into());
        assert_eq!(slots(&twice), None);
    }

    #[test]
    fn drivers_are_classified_or_unknown() {
        assert_eq!(is_pci("virtio-blk-pci"), Some(true));
        assert_eq!(is_pci("pcie-root-port"), Some(true));
        assert_eq!(is_pci("virtio-blk-ccw"), Some(false));
        assert_eq!(is_pci("virtconsole"), Some(false));
        assert_eq!(is_pci("max-x86_64-cpu"), Some(false));
        assert_eq!(is_pci("something-new"), None);
    }
}
