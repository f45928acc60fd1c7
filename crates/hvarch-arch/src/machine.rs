//! Machine types and what a backend knows about them.

use hvarch_devices::config::{Accelerator, Machine, MachineOptions};

/// `pc-lite` (Kata's lite PC machine).
pub const PC_LITE: &str = "pc-lite";
/// `pc` (i440FX).
pub const PC: &str = "pc";
/// `q35` (ICH9, PCIe).
pub const Q35: &str = "q35";
/// `microvm` (no PCI; virtio-mmio).
pub const MICROVM: &str = "microvm";
/// `virt` (arm64; PCIe).
pub const VIRT: &str = "virt";
/// `pseries` (ppc64le; root bus `pci.0`).
pub const PSERIES: &str = "pseries";
/// `s390-ccw-virtio` (s390x).
pub const S390_CCW_VIRTIO: &str = "s390-ccw-virtio";

/// The root bus of PCIe machines.
pub const PCIE_ROOT_BUS: &str = "pcie.0";
/// The root bus of PCI machines.
pub const PCI_ROOT_BUS: &str = "pci.0";

/// A machine type a backend supports, with its default options (without the accelerator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineSpec {
    /// The machine type.
    pub machine_type: String,
    /// Its options, e.g. `usb=off,gic-version=host`.
    pub options: MachineOptions,
}

impl MachineSpec {
    /// A machine type with `options` in option syntax.
    ///
    /// Used with literal option strings; a malformed one is a bug the backend's tests catch,
    /// and yields no options rather than a panic.
    pub fn new(machine_type: &str, options: &str) -> Self {
        MachineSpec {
            machine_type: machine_type.to_owned(),
            options: MachineOptions::parse(options).unwrap_or_default(),
        }
    }

    /// The `-machine` value for `accel`.
    pub fn to_machine(&self, accel: Accelerator) -> Machine {
        Machine {
            machine_type: self.machine_type.clone(),
            accel: Some(accel),
            options: self.options.clone(),
        }
    }

    /// Whether the machine's root bus is PCIe (`q35`, `virt`).
    pub fn is_pcie(&self) -> bool {
        is_pcie_machine(&self.machine_type)
    }
}

/// Whether `machine_type` has a PCIe root bus (`pcie.0`).
pub fn is_pcie_machine(machine_type: &str) -> bool {
    matches!(machine_type, Q35 | VIRT)
}

/// Whether `machine_type` has NUMA nodes to put guest RAM on (`-numa node,memdev=`); the
/// others take it as `-machine memory-backend=` (govmm's `isDimmSupported`: not `microvm`,
/// not s390x).
pub fn has_numa(machine_type: &str) -> bool {
    !matches!(machine_type, MICROVM | S390_CCW_VIRTIO)
}

/// The root bus of `machine_type`: `pcie.0` on `q35` and `virt`, `pci.0` elsewhere.
pub fn root_bus(machine_type: &str) -> &'static str {
    if is_pcie_machine(machine_type) {
        PCIE_ROOT_BUS
    } else {
        PCI_ROOT_BUS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buses_and_numa_per_machine() {
        for (machine, pcie, bus, numa) in [
            (Q35, true, PCIE_ROOT_BUS, true),
            (VIRT, true, PCIE_ROOT_BUS, true),
            (PC, false, PCI_ROOT_BUS, true),
            (PSERIES, false, PCI_ROOT_BUS, true),
            (MICROVM, false, PCI_ROOT_BUS, false),
            (S390_CCW_VIRTIO, false, PCI_ROOT_BUS, false),
        ] {
            assert_eq!(is_pcie_machine(machine), pcie, "{machine}");
            assert_eq!(root_bus(machine), bus, "{machine}");
            assert_eq!(has_numa(machine), numa, "{machine}");
        }
    }
}
