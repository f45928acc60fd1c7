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
//! | [`QemuArch::append_image`] | the rootfs image on an NVDIMM unless disabled |
//! | [`QemuArch::append_nvdimm_image`] | the NVDIMM mapped without `readonly`/`unarmed` (arm64 QEMU lacked the property; Kata 2.2+, `TestQemuArm64AppendNvdimmImage`) |
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
//! The GIC version is the one `machine_accelerators` names (`gic-version=2`, Kata's advice
//! to GICv2 users), else the host's under KVM (`gic-version=host`), else GICv3 (TCG). Kata
//! always assumed GICv3 for the cap, so a `gic-version=2` VM got 123 vCPUs QEMU refuses;
//! hvarch caps it at 8.
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

use hvarch_arch::arch::{ArchBase, ArchSpec, MigrationCapability, QemuArch, RootfsImage};
use hvarch_arch::guest_arch::GuestArch;
use hvarch_arch::machine::{MachineSpec, VIRT};
use hvarch_arch::resources::Volume;
use hvarch_arch::settings::HypervisorConfig;
use hvarch_arch::{ArchError, Result};
use hvarch_devices::config::Accelerator;
use hvarch_devices::kernel_params::KernelParams;
use hvarch_devices::Device;

pub use host::{gic_version_in, host_gic_version, GicVersion, INTERRUPTS_LINES_READ};

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
        let asked = hvarch_devices::config::MachineOptions::parse(&config.machine_accelerators)
            .ok()
            .and_then(|options| {
                options
                    .get("gic-version")
                    .and_then(GicVersion::from_machine_option)
            });
        let gic = match (asked, config.accelerator) {
            (Some(gic), _) => gic,
            // gic-version=host: QEMU takes the host's GIC; cap vCPUs by what the host has.
            (None, Accelerator::Kvm) => host_gic_version().unwrap_or(GicVersion::DEFAULT),
            (None, Accelerator::Tcg) => GicVersion::V3,
        };
        let spec = ArchSpec {
            guest_arch: GuestArch::Aarch64,
            default_machine: DEFAULT_MACHINE,
            machines: vec![MachineSpec::new(VIRT, options)],
            qemu_paths: vec![(VIRT, QEMU_PATH)],
            kernel_params: KernelParams::parse(KERNEL_PARAMS).unwrap_or_default(),
            max_vcpus: gic.max_vcpus(),
            migration_wait: MIGRATION_WAIT,
            rootfs: RootfsImage::Nvdimm { dax: true },
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
            self.append_block_image(devices, path)
        } else {
            self.append_nvdimm_image(devices, path)
        }
    }

    fn append_nvdimm_image(&self, devices: &mut Vec<Device>, path: &Path) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use hvarch_arch::bridge::BridgeType;
    use hvarch_arch::testing::argv;

    fn arm64(config: HypervisorConfig) -> Arm64 {
        Arm64::new(&config).unwrap()
    }

    fn kvm() -> Arm64 {
        arm64(HypervisorConfig::default())
    }

    #[test]
    fn constants_of_qemu_arm64_go() {
        let arch = kvm();
        assert_eq!(arch.guest_arch(), GuestArch::Aarch64);
        assert_eq!(arch.qemu_path().unwrap(), PathBuf::from(QEMU_PATH));
        let machine = arch.machine().unwrap().to_machine(Accelerator::Kvm);
        assert_eq!(machine.machine_type, "virt");
        assert_eq!(machine.accel, Some(Accelerator::Kvm));
        assert_eq!(
            machine.options.iter().collect::<Vec<_>>(),
            [("usb", "off"), ("gic-version", "host")]
        );
        assert_eq!(
            arch.kernel_parameters(false).to_string(),
            "console=hvc0 console=hvc1 iommu.passthrough=0 quiet"
        );
        assert_eq!(arch.max_vcpus(), 123);
        assert_eq!(arch.migration_wait_timeout(), Duration::from_secs(10));
        assert_eq!(arch.cpu_model().model, "host");
        // Only `virt` is supported.
        let err = Arm64::new(&HypervisorConfig {
            machine_type: Some("q35".into()),
            ..HypervisorConfig::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unrecognised machine type: q35 (supported: virt)"
        );
    }

    #[test]
    fn tcg_uses_gicv3_and_cpu_max() {
        let arch = arm64(HypervisorConfig {
            accelerator: Accelerator::Tcg,
            ..HypervisorConfig::default()
        });
        let machine = arch.machine().unwrap().to_machine(Accelerator::Tcg);
        assert_eq!(machine.options.get("gic-version"), Some("3"));
        assert_eq!(arch.cpu_model().model, "max");
        assert_eq!(arch.max_vcpus(), GicVersion::V3.max_vcpus());
    }

    #[test]
    fn gic_version_from_machine_accelerators_caps_vcpus() {
        for (accelerator, option, gic, max) in [
            (Accelerator::Kvm, "gic-version=2", "2", 8),
            (Accelerator::Tcg, "gic-version=2", "2", 8),
            (Accelerator::Tcg, "gic-version=4", "4", 123),
            (Accelerator::Kvm, "gic-version=3,its=off", "3", 123),
            // `max` and `host` leave the choice to QEMU: hvarch assumes GICv3 (Kata).
            (Accelerator::Tcg, "gic-version=max", "max", 123),
        ] {
            let arch = arm64(HypervisorConfig {
                accelerator,
                machine_accelerators: option.into(),
                ..HypervisorConfig::default()
            });
            assert_eq!(arch.max_vcpus(), max, "{accelerator:?} {option}");
            let machine = arch.machine().unwrap();
            assert_eq!(machine.options.get("gic-version"), Some(gic), "{option}");
        }
        // Without a gic-version option: GICv3 under TCG, the host's (else GICv3) under KVM.
        let tcg = arm64(HypervisorConfig {
            accelerator: Accelerator::Tcg,
            ..HypervisorConfig::default()
        });
        assert_eq!(tcg.max_vcpus(), 123);
        assert_eq!(
            kvm().max_vcpus(),
            host_gic_version()
                .unwrap_or(GicVersion::DEFAULT)
                .max_vcpus()
        );
    }

    #[test]
    fn pflash_needs_none_or_two_images() {
        let with = |n: usize| {
            arm64(HypervisorConfig {
                pflashes: (0..n)
                    .map(|i| PathBuf::from(format!("/fw/{i}.fd")))
                    .collect(),
                ..HypervisorConfig::default()
            })
            .pflash()
        };
        assert!(with(0).unwrap().is_empty());
        assert_eq!(
            with(1).unwrap_err().to_string(),
            "two pflash images needed for arm64"
        );
        assert_eq!(with(2).unwrap().len(), 2);
        assert_eq!(
            with(3).unwrap_err().to_string(),
            "too many pflash images for arm64"
        );
    }

    #[test]
    fn no_viommu_on_arm64() {
        let mut devices = Vec::new();
        assert_eq!(
            kvm().append_iommu(&mut devices).unwrap_err().to_string(),
            "Arm64 architecture does not support vIOMMU"
        );
        assert!(devices.is_empty());
    }

    #[test]
    fn nine_p_without_multidevs() {
        let volume = Volume {
            mount_tag: "shared".into(),
            host_path: "/srv".into(),
        };
        let mut devices = Vec::new();
        kvm().append_9p_volume(&mut devices, &volume).unwrap();
        assert_eq!(
            argv(&devices)[1],
            "local,id=extra-9p-shared,path=/srv,security_model=none"
        );
        // An empty tag is an error here too (Kata's arm64 skipped the check).
        let empty = Volume {
            mount_tag: String::new(),
            ..volume
        };
        assert!(kvm().append_9p_volume(&mut devices, &empty).is_err());
    }

    #[test]
    fn image_on_nvdimm_without_readonly() {
        let file = hvarch_arch::testing::TempImage::new("rootfs.img", 4 << 20);
        let path = file.path().to_path_buf();
        let arch = arm64(HypervisorConfig {
            image_path: Some(path.clone()),
            ..HypervisorConfig::default()
        });
        assert_eq!(arch.machine().unwrap().options.get("nvdimm"), Some("on"));
        assert!(arch
            .kernel_parameters(false)
            .to_string()
            .contains("root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro"));
        let expected = [
            "-object".to_owned(),
            format!(
                "memory-backend-file,id=mem0,size=4M,mem-path={}",
                path.display()
            ),
            "-device".to_owned(),
            "nvdimm,id=nv0,memdev=mem0".to_owned(),
        ];
        let mut devices = Vec::new();
        arch.append_image(&mut devices, &path).unwrap();
        assert_eq!(argv(&devices), expected);
        // Kata 2.x's TestQemuArm64AppendNvdimmImage: the NVDIMM itself has no ReadOnly.
        let mut devices = Vec::new();
        arch.append_nvdimm_image(&mut devices, &path).unwrap();
        assert_eq!(argv(&devices), expected);

        let disabled = arm64(HypervisorConfig {
            image_path: Some(path.clone()),
            disable_nvdimm: true,
            ..HypervisorConfig::default()
        });
        let mut devices = Vec::new();
        disabled.append_image(&mut devices, &path).unwrap();
        assert!(argv(&devices)[3].starts_with("virtio-blk-pci,"));
        assert!(disabled.machine().unwrap().options.get("nvdimm").is_none());
    }

    #[test]
    fn initrd_boot_has_no_nvdimm() {
        let arch = arm64(HypervisorConfig {
            initrd_path: Some("/boot/initrd.img".into()),
            ..HypervisorConfig::default()
        });
        assert!(arch.machine().unwrap().options.get("nvdimm").is_none());
        assert!(!arch.kernel_parameters(false).contains("root"));
    }

    #[test]
    fn no_migration_capabilities() {
        assert!(kvm().migration_capabilities().is_empty());
    }

    #[test]
    fn kata_1x_gaps_are_fixed() {
        // The memory offset is honoured.
        let arch = arm64(HypervisorConfig {
            memory_offset_mb: 1024,
            ..HypervisorConfig::default()
        });
        assert_eq!(
            arch.memory_topology(2048, 8192, 10).maxmem,
            Some((8192 + 1024) << 20)
        );
        // PCIe root ports work on virt.
        let mut devices = Vec::new();
        arch.append_pcie_root_ports(&mut devices, 1).unwrap();
        assert_eq!(
            argv(&devices)[1],
            "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=0,multifunction=off"
        );
    }

    #[test]
    fn bridges_are_pci_on_virt() {
        let mut arch = kvm();
        arch.bridges(1);
        assert_eq!(arch.get_bridges().len(), 1);
        let bridge = arch.get_bridges().iter().next().unwrap();
        assert_eq!(
            (bridge.id.as_str(), bridge.bridge_type),
            ("pci-bridge-0", BridgeType::Pci)
        );
        let mut devices = Vec::new();
        arch.append_bridges(&mut devices).unwrap();
        assert_eq!(
            argv(&devices),
            [
                "-device",
                "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=02"
            ]
        );
    }

    #[test]
    fn everything_else_is_the_base() {
        let arch = kvm();
        assert!(arch.supports_guest_memory_hotplug());
        assert!(arch.capabilities().block_device_hotplug);
        assert_eq!(arch.cpu_topology(1, 4).maxcpus, Some(4));
    }
}

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
