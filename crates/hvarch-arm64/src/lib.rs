//! # hvarch-arm64
//!
//! The arm64 backend: Kata's `qemu_arm64.go` as a [`QemuArch`] implementation.
//!
//! [`Arm64`] keeps every generic behaviour of [`ArchBase`] and overrides exactly what arm64
//! does differently:
//!
//! | method | arm64 behaviour |
//! |---|---|
//! | [`QemuArch::bridges`] | bridges of the machine's kind (`virt` → PCI), not the base's unconditional PCI |
//! | [`QemuArch::append_image`] | the rootfs image on an NVDIMM unless disabled, mapped without `readonly` (arm64 QEMU lacked the property; Kata 2.2+) |
//! | [`QemuArch::append_iommu`] | an error: "Arm64 architecture does not support vIOMMU" |
//! | [`QemuArch::append_9p_volume`] | 9p without `multidevs=` (old arm64 QEMUs refuse it) |
//! | [`QemuArch::pflash`] | none, or exactly two images (UEFI code and vars) |
//! | [`QemuArch::migration_capabilities`] | none: `x-ignore-shared` is not used on arm64 |
//!
//! Its constants: `/usr/bin/qemu-system-aarch64`, machine `virt` with `usb=off` and
//! `gic-version=host` (`gic-version=3` under TCG, which cannot use the host's GIC), kernel
//! parameters `console=hvc0 console=hvc1 iommu.passthrough=0`, a vCPU cap taken from the GIC
//! version (GICv2: 8, GICv3/v4: 123), and a 10 s migration wait.
//!
//! Two gaps of Kata 1.x are fixed on purpose: the memory offset is honoured in `maxmem`
//! (the base does it), and PCIe root ports work on `virt` (later Kata hotplugs through them).
//!
//! ```
//! use hvarch_arch::{arch::QemuArch, settings::HypervisorConfig};
//! use hvarch_devices::config::Accelerator;
//! use hvarch_arm64::Arm64;
//!
//! let config = HypervisorConfig { accelerator: Accelerator::Tcg, ..HypervisorConfig::default() };
//! let arch = Arm64::new(&config).unwrap();
//! let machine = arch.machine().unwrap().to_machine(Accelerator::Tcg);
//! assert_eq!(machine.options.get("gic-version"), Some("3"));
//! assert_eq!(arch.kernel_parameters(false).to_string(),
//!            "console=hvc0 console=hvc1 iommu.passthrough=0 quiet");
//! assert!(arch.migration_capabilities().is_empty());
//! ```
#![deny(missing_docs)]

mod host;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hvarch_arch::arch::{ArchBase, ArchSpec, MigrationCapability, QemuArch};
use hvarch_arch::guest_arch::GuestArch;
use hvarch_arch::machine::{MachineSpec, VIRT};
use hvarch_arch::resources::Volume;
use hvarch_arch::settings::HypervisorConfig;
use hvarch_arch::{ArchError, Result};
use hvarch_devices::config::Accelerator;
use hvarch_devices::kernel_params::KernelParams;
use hvarch_devices::Device;

pub use host::{host_gic_version, GicVersion};

/// The default QEMU binary.
pub const QEMU_PATH: &str = "/usr/bin/qemu-system-aarch64";
/// The machine type.
pub const DEFAULT_MACHINE: &str = VIRT;
/// `virt`'s options under KVM.
pub const MACHINE_OPTIONS_KVM: &str = "usb=off,gic-version=host";
/// `virt`'s options under TCG (`gic-version=host requires KVM`).
pub const MACHINE_OPTIONS_TCG: &str = "usb=off,gic-version=3";
/// The architecture's kernel parameters.
pub const KERNEL_PARAMS: &str = "console=hvc0 console=hvc1 iommu.passthrough=0";
/// How long to wait for a migration (Kata: 10 s on arm64, 5 s elsewhere).
pub const MIGRATION_WAIT: Duration = Duration::from_secs(10);

/// The arm64 backend.
#[derive(Clone, Debug)]
pub struct Arm64 {
    base: ArchBase,
}

impl Arm64 {
    /// The backend for `config`: machine `virt` (the only one), the GIC-derived vCPU cap,
    /// and image handling done (NVDIMM machine option and root parameters for an image).
    pub fn new(config: &HypervisorConfig) -> Result<Self> {
        let options = match config.accelerator {
            Accelerator::Kvm => MACHINE_OPTIONS_KVM,
            Accelerator::Tcg => MACHINE_OPTIONS_TCG,
        };
        let gic = match config.accelerator {
            // gic-version=host: QEMU takes the host's GIC; cap vCPUs by what the host has.
            Accelerator::Kvm => host_gic_version().unwrap_or(GicVersion::DEFAULT),
            Accelerator::Tcg => GicVersion::V3,
        };
        let spec = ArchSpec {
            guest_arch: GuestArch::Aarch64,
            default_machine: DEFAULT_MACHINE,
            machines: vec![MachineSpec::new(VIRT, options)],
            qemu_paths: vec![(VIRT, QEMU_PATH)],
            kernel_params: KernelParams::parse(KERNEL_PARAMS).unwrap_or_default(),
            max_vcpus: gic.max_vcpus(),
            migration_wait: MIGRATION_WAIT,
            dax: true,
        };
        let mut arch = Arm64 {
            base: ArchBase::new(spec, config)?,
        };
        arch.handle_image_path(config);
        Ok(arch)
    }
}

impl QemuArch for Arm64 {
    fn base(&self) -> &ArchBase {
        &self.base
    }

    fn base_mut(&mut self) -> &mut ArchBase {
        &mut self.base
    }

    fn bridges(&mut self, number: u32) {
        self.base.generic_bridges(number);
    }

    fn append_image(&self, devices: &mut Vec<Device>, path: &Path) -> Result<()> {
        if self.base.disable_nvdimm {
            return self.append_block_image(devices, path);
        }
        devices.extend(self.base.nvdimm_image(path, false)?);
        Ok(())
    }

    fn append_iommu(&self, _devices: &mut Vec<Device>) -> Result<()> {
        Err(ArchError::NoIommu {
            reason: "Arm64 architecture does not support vIOMMU".into(),
        })
    }

    fn append_9p_volume(&self, devices: &mut Vec<Device>, volume: &Volume) -> Result<()> {
        devices.push(self.base.fs_9p_device(volume, None)?);
        Ok(())
    }

    fn pflash(&self) -> Result<Vec<PathBuf>> {
        match self.base.pflash.len() {
            0 | 2 => Ok(self.base.pflash.clone()),
            1 => Err(ArchError::Pflash {
                reason: "two pflash images needed for arm64".into(),
            }),
            _ => Err(ArchError::Pflash {
                reason: "too many pflash images for arm64".into(),
            }),
        }
    }

    fn migration_capabilities(&self) -> Vec<MigrationCapability> {
        Vec::new()
    }
}
