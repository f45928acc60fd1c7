//! # hvarch-amd64
//!
//! The x86_64 backend: Kata's `qemu_amd64.go` as a [`QemuArch`] implementation, for the
//! machines `pc`, `q35` (the default) and `microvm` (plus `pc-lite` and `virt` as Kata lists
//! them; `virt` has no default binary).
//!
//! What it changes from [`ArchBase`]:
//!
//! | method | x86_64 behaviour |
//! |---|---|
//! | machine options | `kernel_irqchip=on` under KVM, `kernel_irqchip=split` with a vIOMMU (needed for interrupt remapping); none under TCG |
//! | [`QemuArch::kernel_parameters`] | Kata's x86 set, then `intel_iommu=on iommu=pt` with a vIOMMU or `iommu=off` |
//! | [`QemuArch::capabilities`] | block hotplug only on `pc`, `q35` and `virt` |
//! | [`QemuArch::bridges`] | bridges of the machine's kind (none on `microvm`) |
//! | [`QemuArch::cpu_model`] | `vmx=off` for VM templates |
//! | [`QemuArch::memory_topology`] | `maxmem` = host + offset + 1024 MiB (room for the NVDIMM image) |
//! | [`QemuArch::append_image`] | NVDIMM unless disabled (read-only, disarmed) |
//! | [`QemuArch::supports_guest_memory_hotplug`] | not on `microvm` |
//!
//! Devices on `microvm` use the virtio-mmio transport. 240 vCPUs at most; 5 s migration wait.
//!
//! ```
//! use hvarch_amd64::Amd64;
//! use hvarch_arch::{arch::QemuArch, settings::HypervisorConfig};
//! use hvarch_devices::config::Accelerator;
//!
//! let config = HypervisorConfig { iommu: true, ..HypervisorConfig::default() };
//! let arch = Amd64::new(&config).unwrap();
//! let machine = arch.machine().unwrap().to_machine(Accelerator::Kvm);
//! assert_eq!(machine.options.get("kernel_irqchip"), Some("split"));
//! assert!(arch.kernel_parameters(false).to_string().contains("intel_iommu=on iommu=pt"));
//! ```
#![deny(missing_docs)]

use std::path::Path;
use std::time::Duration;

use hvarch_arch::arch::{ArchBase, ArchSpec, Capabilities, QemuArch, RootfsImage};
use hvarch_arch::guest_arch::GuestArch;
use hvarch_arch::machine::{MachineSpec, MICROVM, PC, PC_LITE, Q35, VIRT};
use hvarch_arch::settings::{HypervisorConfig, TemplateRole};
use hvarch_arch::Result;
use hvarch_devices::config::{Accelerator, Cpu, Memory};
use hvarch_devices::kernel_params::KernelParams;
use hvarch_devices::Device;

/// The default QEMU binary.
pub const QEMU_PATH: &str = "/usr/bin/qemu-system-x86_64";
/// The QEMU-lite binary Kata used for `pc-lite`.
pub const QEMU_LITE_PATH: &str = "/usr/bin/qemu-lite-system-x86_64";
/// The machine used when none is configured (Kata 2.x's choice; Kata 1.x used `pc`).
pub const DEFAULT_MACHINE: &str = Q35;
/// The architecture's kernel parameters (before the IOMMU switch).
pub const KERNEL_PARAMS: &str = "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 \
    i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k \
    console=hvc0 console=hvc1 cryptomgr.notests net.ifnames=0 pci=lastbus=0";
/// The most vCPUs QEMU gives an x86_64 guest here.
pub const MAX_VCPUS: u32 = 240;
/// How long to wait for a migration.
pub const MIGRATION_WAIT: Duration = Duration::from_secs(5);
/// MiB reserved above host memory in `maxmem` for the NVDIMM image (clearcontainers#380).
pub use hvarch_arch::arch::NVDIMM_RESERVE_MB;

/// The x86_64 backend.
#[derive(Clone, Debug)]
pub struct Amd64 {
    base: ArchBase,
    iommu: bool,
    template: TemplateRole,
}

impl Amd64 {
    /// The backend for `config`.
    pub fn new(config: &HypervisorConfig) -> Result<Self> {
        let irqchip = match (config.accelerator, config.iommu) {
            (Accelerator::Kvm, true) => "kernel_irqchip=split",
            (Accelerator::Kvm, false) => "kernel_irqchip=on",
            (Accelerator::Tcg, _) => "",
        };
        let machines = [PC_LITE, PC, Q35, VIRT, MICROVM]
            .iter()
            .map(|m| MachineSpec::new(m, irqchip))
            .collect();
        let mut kernel_params = KernelParams::parse(KERNEL_PARAMS).unwrap_or_default();
        let iommu_params = if config.iommu {
            "intel_iommu=on iommu=pt"
        } else {
            "iommu=off"
        };
        kernel_params.extend(&KernelParams::parse(iommu_params).unwrap_or_default());
        let spec = ArchSpec {
            guest_arch: GuestArch::X86_64,
            default_machine: DEFAULT_MACHINE,
            machines,
            qemu_paths: vec![
                (PC_LITE, QEMU_LITE_PATH),
                (PC, QEMU_PATH),
                (Q35, QEMU_PATH),
                (MICROVM, QEMU_PATH),
            ],
            kernel_params,
            max_vcpus: MAX_VCPUS,
            migration_wait: MIGRATION_WAIT,
            rootfs: RootfsImage::Nvdimm { dax: true },
        };
        let mut arch = Amd64 {
            base: ArchBase::new(spec, config)?,
            iommu: config.iommu,
            template: config.template,
        };
        arch.handle_image_path(config);
        Ok(arch)
    }

    /// Whether the VM gets a vIOMMU.
    pub fn iommu(&self) -> bool {
        self.iommu
    }
}

impl QemuArch for Amd64 {
    fn base(&self) -> &ArchBase {
        &self.base
    }

    fn base_mut(&mut self) -> &mut ArchBase {
        &mut self.base
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_device_hotplug: matches!(self.base.machine_type.as_str(), PC | Q35 | VIRT),
            multi_queue: true,
            fs_sharing: true,
        }
    }

    fn bridges(&mut self, number: u32) {
        self.base.generic_bridges(number);
    }

    fn cpu_model(&self) -> Cpu {
        let mut cpu = Cpu {
            model: match self.base.accelerator {
                Accelerator::Kvm => "host",
                Accelerator::Tcg => "max",
            }
            .to_owned(),
            features: self.base.cpu_features.clone(),
        };
        // A template's CPU state must restore on any host: no nested VMX.
        if self.template != TemplateRole::None {
            cpu.features.push("vmx=off".into());
        }
        cpu
    }

    fn memory_topology(&self, memory_mb: u64, host_memory_mb: u64, slots: u32) -> Memory {
        self.base
            .generic_memory_topology(memory_mb, host_memory_mb, slots)
    }

    fn append_image(&self, devices: &mut Vec<Device>, path: &Path) -> Result<()> {
        if self.base.disable_nvdimm {
            self.append_block_image(devices, path)
        } else {
            self.append_nvdimm_image(devices, path)
        }
    }

    fn supports_guest_memory_hotplug(&self) -> bool {
        self.base.machine_type != MICROVM
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvarch_arch::bridge::BridgeType;
    use hvarch_arch::testing::argv;

    use std::path::PathBuf;

    fn amd64(config: HypervisorConfig) -> Amd64 {
        Amd64::new(&config).unwrap()
    }

    fn on(machine: &str) -> Amd64 {
        amd64(HypervisorConfig {
            machine_type: Some(machine.into()),
            ..HypervisorConfig::default()
        })
    }

    #[test]
    fn machine_options_follow_accelerator_and_iommu() {
        let kvm = amd64(HypervisorConfig::default());
        assert_eq!(kvm.machine().unwrap().machine_type, "q35");
        assert_eq!(
            kvm.machine().unwrap().options.get("kernel_irqchip"),
            Some("on")
        );
        let split = amd64(HypervisorConfig {
            iommu: true,
            ..HypervisorConfig::default()
        });
        assert!(split.iommu());
        assert_eq!(
            split.machine().unwrap().options.get("kernel_irqchip"),
            Some("split")
        );
        let tcg = amd64(HypervisorConfig {
            accelerator: Accelerator::Tcg,
            iommu: true,
            ..HypervisorConfig::default()
        });
        assert!(tcg.machine().unwrap().options.is_empty());
        assert_eq!(tcg.cpu_model().model, "max");
    }

    #[test]
    fn kernel_params_with_iommu_switch() {
        let plain = amd64(HypervisorConfig::default()).kernel_parameters(false);
        assert_eq!(
            plain.to_string(),
            format!("{} iommu=off quiet", KERNEL_PARAMS)
        );
        let iommu = amd64(HypervisorConfig {
            iommu: true,
            ..HypervisorConfig::default()
        })
        .kernel_parameters(false)
        .to_string();
        assert!(iommu.ends_with("pci=lastbus=0 intel_iommu=on iommu=pt quiet"));
        // Building twice does not accumulate (Kata mutated a global list).
        let again = amd64(HypervisorConfig::default()).kernel_parameters(false);
        assert_eq!(again, plain);
    }

    #[test]
    fn limits_and_paths() {
        // Every machine: Kata's binary (pc-lite: QEMU-lite), 240 vCPUs, a 5 s migration wait,
        // and x-ignore-shared for templates.
        for (machine, path) in [
            ("q35", Some(QEMU_PATH)),
            ("pc", Some(QEMU_PATH)),
            ("microvm", Some(QEMU_PATH)),
            ("pc-lite", Some(QEMU_LITE_PATH)),
            ("virt", None),
        ] {
            let arch = on(machine);
            assert_eq!(arch.guest_arch(), GuestArch::X86_64, "{machine}");
            assert_eq!(arch.max_vcpus(), 240, "{machine}");
            assert_eq!(
                arch.migration_wait_timeout(),
                Duration::from_secs(5),
                "{machine}"
            );
            assert_eq!(
                arch.migration_capabilities(),
                [hvarch_arch::arch::MigrationCapability {
                    capability: "x-ignore-shared".into(),
                    state: true,
                }],
                "{machine}"
            );
            match path {
                Some(path) => assert_eq!(arch.qemu_path().unwrap(), PathBuf::from(path)),
                // Kata lists `virt` without a binary: an error naming the machine.
                None => assert_eq!(
                    arch.qemu_path().unwrap_err().to_string(),
                    "Unknown machine type: virt: no QEMU path known for it; set hypervisor_path"
                ),
            }
        }
        // A configured binary wins on every machine.
        let configured = amd64(HypervisorConfig {
            machine_type: Some("virt".into()),
            hypervisor_path: Some("/opt/qemu/bin/qemu-system-x86_64".into()),
            ..HypervisorConfig::default()
        });
        assert_eq!(
            configured.qemu_path().unwrap(),
            PathBuf::from("/opt/qemu/bin/qemu-system-x86_64")
        );
        // Kata's machines, and no other.
        assert_eq!(
            Amd64::new(&HypervisorConfig {
                machine_type: Some("pseries".into()),
                ..HypervisorConfig::default()
            })
            .unwrap_err()
            .to_string(),
            "unrecognised machine type: pseries (supported: pc-lite, pc, q35, virt, microvm)"
        );
    }

    #[test]
    fn memory_topology_reserves_nvdimm_room() {
        let arch = amd64(HypervisorConfig {
            memory_offset_mb: 256,
            ..HypervisorConfig::default()
        });
        assert_eq!(
            arch.memory_topology(2048, 8192, 10).maxmem,
            Some((8192 + 256 + 1024) << 20)
        );
    }

    #[test]
    fn capabilities_and_hotplug_per_machine() {
        for (machine, block_hotplug, memory_hotplug) in [
            ("pc", true, true),
            ("q35", true, true),
            ("virt", true, true),
            ("pc-lite", false, true),
            ("microvm", false, false),
        ] {
            let arch = on(machine);
            assert_eq!(
                arch.capabilities().block_device_hotplug,
                block_hotplug,
                "{machine}"
            );
            assert_eq!(
                arch.supports_guest_memory_hotplug(),
                memory_hotplug,
                "{machine}"
            );
        }
    }

    #[test]
    fn bridges_by_machine() {
        let mut q35 = on("q35");
        q35.bridges(2);
        assert!(q35
            .get_bridges()
            .iter()
            .all(|b| b.bridge_type == BridgeType::Pci));
        let mut devices = Vec::new();
        q35.append_bridges(&mut devices).unwrap();
        assert_eq!(
            argv(&devices)[1],
            "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=02"
        );
        let mut microvm = on("microvm");
        microvm.bridges(2);
        assert!(microvm.get_bridges().is_empty());
    }

    #[test]
    fn iommu_and_root_ports_on_q35_only() {
        let mut devices = Vec::new();
        on("q35").append_iommu(&mut devices).unwrap();
        on("q35").append_pcie_root_ports(&mut devices, 1).unwrap();
        assert_eq!(
            argv(&devices),
            [
                "-device",
                "intel-iommu,intremap=on,device-iotlb=on,caching-mode=on",
                "-device",
                "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=0,multifunction=off",
            ]
        );
        assert!(on("pc").append_iommu(&mut devices).is_err());
        assert!(on("pc").append_pcie_root_ports(&mut devices, 1).is_err());
    }

    #[test]
    fn templates_disable_vmx() {
        let arch = amd64(HypervisorConfig {
            template: TemplateRole::BootToBeTemplate,
            cpu_features: vec!["pmu=off".into()],
            ..HypervisorConfig::default()
        });
        assert_eq!(arch.cpu_model().features, ["pmu=off", "vmx=off"]);
        assert!(on("q35").cpu_model().features.is_empty());
    }

    #[test]
    fn microvm_uses_mmio() {
        let mut devices = Vec::new();
        on("microvm")
            .append_scsi_controller(&mut devices, false)
            .unwrap();
        assert_eq!(argv(&devices), ["-device", "virtio-scsi-device,id=scsi0"]);
    }

    #[test]
    fn image_on_readonly_nvdimm() {
        let file = hvarch_arch::testing::TempImage::new("rootfs.img", 2 << 20);
        let path = file.path().to_path_buf();
        let arch = amd64(HypervisorConfig {
            image_path: Some(path.clone()),
            ..HypervisorConfig::default()
        });
        let mut devices = Vec::new();
        arch.append_image(&mut devices, &path).unwrap();
        let args = argv(&devices);
        assert!(args[1].ends_with("readonly=on"));
        assert_eq!(args[3], "nvdimm,id=nv0,memdev=mem0,unarmed=on");
    }
}

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
