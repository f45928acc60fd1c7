//! # hvarch-ppc64le
//!
//! The ppc64le backend: Kata's `qemu_ppc64le.go` as a [`QemuArch`] implementation, for the
//! POWER machine `pseries` (PAPR: the guest runs under a hypervisor's firmware interface).
//!
//! It sits beside `hvarch-arm64` and `hvarch-amd64` on top of `hvarch-arch`: the facade
//! (`hvarch::backend`) returns it for `GuestArch::Ppc64le`, and `hvarch::native` names it on
//! little-endian `powerpc64` hosts.
//!
//! [`Ppc64le`] keeps every generic behaviour of [`ArchBase`] (virtio-pci devices, PCI
//! bridges for hotplug, virtio-blk rootfs, virtio-scsi, 9p with `multidevs=remap`,
//! vhost-user, memory hotplug, the `x-ignore-shared` migration capability) and overrides exactly what ppc64le does
//! differently:
//!
//! | method | ppc64le behaviour |
//! |---|---|
//! | [`QemuArch::memory_topology`] | `maxmem` = host memory aligned down to 256 MiB ([`maxmem_host_mb`]), + offset + 1024 MiB |
//! | [`QemuArch::append_iommu`] | an error: "PPC64le does not support appending a vIOMMU" |
//!
//! Its constants: `/usr/bin/qemu-system-ppc64`, machine `pseries` with `usb=off` (under TCG
//! also the spectre/meltdown capabilities only KVM has, set to `broken`/`off`, so QEMU starts
//! without warnings), Kata's kernel parameters
//! `tsc=reliable no_timer_check rcupdate.rcu_expedited=1 noreplace-smp reboot=k console=hvc0
//! console=hvc1 cryptomgr.notests net.ifnames=0`, 128 vCPUs, a 5 s migration wait. Kata's
//! Protected Execution Facility settings are kept as data ([`PEF`]); hvarch does not enable
//! them.
//!
//! ```
//! use hvarch_arch::{arch::QemuArch, settings::HypervisorConfig};
//! use hvarch_devices::config::Accelerator;
//! use hvarch_ppc64le::Ppc64le;
//!
//! let config = HypervisorConfig { accelerator: Accelerator::Tcg, ..HypervisorConfig::default() };
//! let arch = Ppc64le::new(&config).unwrap();
//! let machine = arch.machine().unwrap().to_machine(Accelerator::Tcg);
//! assert_eq!(machine.machine_type, "pseries");
//! assert_eq!(machine.options.get("cap-cfpc"), Some("broken"));
//! assert_eq!(arch.max_vcpus(), 128);
//! // maxmem: 16000 MiB of host memory aligned down to 15872, + 1024 for the NVDIMM image.
//! assert_eq!(arch.memory_topology(2048, 16000, 10).maxmem, Some((15872 + 1024) << 20));
//! ```
//!
//! # Kata's quirks, and where hvarch departs
//!
//! - **The rootfs image is virtio-blk, always.** Kata's ppc64le keeps the base `appendImage`
//!   (virtio-blk) while its `handleImagePath` — with `disable_nvdimm` defaulting to false —
//!   adds the `nvdimm` machine option and `root=/dev/pmem0p1`: a guest that looks for its root
//!   on a device it does not have (and QEMU's `pseries` has no `nvdimm` machine option at
//!   all). hvarch keeps the virtio-blk image and makes the rest agree: `root=/dev/vda1`, no
//!   `nvdimm` option, whatever `disable_nvdimm` says
//!   ([`RootfsImage::VirtioBlk`]).
//! - **The `maxmem` rule depends on the QEMU version** (§1.6 of Kata's behaviour): QEMU ≥ 2.10
//!   aligns host memory down to 256 MiB; older QEMUs were capped at 32256 MiB. Kata read the
//!   version from globals set only once a VM had started, so the *first* VM of a runtime got
//!   the 32 GiB cap whatever its QEMU. hvarch supports QEMU ≥ [`MIN_QEMU`] only, so the
//!   ≥ 2.10 rule always applies; [`maxmem_host_mb`] keeps both branches.
//! - **`-cpu`**: Kata's `host` under KVM; under TCG the base's `max` (the newest POWER CPU QEMU
//!   emulates).
//! - Kata's `capabilities` override (block hotplug on `pseries`, multi-queue, filesystem
//!   sharing) and its `bridges` override (`genericBridges`: PCI bridges on `pseries`) give
//!   what the base gives for `pseries`, the only machine: neither is overridden here. The
//!   bridges sit on `pseries`' root bus `pci.0`.
#![deny(missing_docs)]

use std::time::Duration;

use hvarch_arch::arch::{ArchBase, ArchSpec, QemuArch, RootfsImage};
use hvarch_arch::guest_arch::GuestArch;
use hvarch_arch::machine::{MachineSpec, PSERIES};
use hvarch_arch::settings::HypervisorConfig;
use hvarch_arch::{ArchError, Result};
use hvarch_devices::config::{Accelerator, Memory};
use hvarch_devices::kernel_params::KernelParams;
use hvarch_devices::Device;

/// The default QEMU binary.
pub const QEMU_PATH: &str = "/usr/bin/qemu-system-ppc64";
/// The machine type.
pub const DEFAULT_MACHINE: &str = PSERIES;
/// `pseries`' options under KVM (Kata: `accel=kvm,usb=off`).
pub const MACHINE_OPTIONS_KVM: &str = "usb=off";
/// `pseries`' options under TCG: the spectre/meltdown mitigations TCG cannot provide set to
/// `broken`/`off` (QEMU warns for each otherwise).
pub const MACHINE_OPTIONS_TCG: &str =
    "usb=off,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off";
/// The architecture's kernel parameters (Kata 1.x).
pub const KERNEL_PARAMS: &str = "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 \
    noreplace-smp reboot=k console=hvc0 console=hvc1 cryptomgr.notests net.ifnames=0";
/// The most vCPUs Kata gives a ppc64le guest.
pub const MAX_VCPUS: u32 = 128;
/// How long to wait for a migration.
pub const MIGRATION_WAIT: Duration = Duration::from_secs(5);
/// `pseries` hot-plugs memory in blocks of this many MiB (Kata aligns `maxmem` to it).
pub const MEMORY_BLOCK_MB: u64 = 256;
/// The `maxmem` host-memory cap Kata used with QEMU older than 2.10 (31.5 GiB).
pub const LEGACY_MAXMEM_MB: u64 = 32256;
/// The QEMU version from which host memory is aligned instead of capped.
pub const ALIGNED_MAXMEM_SINCE: (u32, u32) = (2, 10);
/// The oldest QEMU hvarch supports (modern syntax only).
pub const MIN_QEMU: (u32, u32) = (7, 2);

/// The host memory (MiB) Kata's ppc64le `memoryTopology` puts under `maxmem` for QEMU
/// `major.minor`: aligned down to [`MEMORY_BLOCK_MB`] from QEMU 2.10 on, else
/// [`LEGACY_MAXMEM_MB`] whatever the host has.
///
/// ```
/// use hvarch_ppc64le::maxmem_host_mb;
/// assert_eq!(maxmem_host_mb(16000, (10, 0)), 15872);
/// assert_eq!(maxmem_host_mb(16000, (2, 9)), 32256);
/// ```
pub fn maxmem_host_mb(host_memory_mb: u64, qemu: (u32, u32)) -> u64 {
    if qemu >= ALIGNED_MAXMEM_SINCE {
        host_memory_mb - host_memory_mb % MEMORY_BLOCK_MB
    } else {
        LEGACY_MAXMEM_MB
    }
}

/// Kata 2.x's Protected Execution Facility (PEF) settings for a confidential `pseries`
/// guest, as data: a machine option, a `pef-guest` object and a `spapr-tpm-proxy` device on
/// the host's TPM resource manager. hvarch does not apply them (no PEF host to prove them on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PefProtection {
    /// Where an ultravisor (PEF) host shows itself.
    pub sys_firmware_dir: &'static str,
    /// The machine option naming the guest-support object, `confidential-guest-support`.
    pub machine_option: &'static str,
    /// The `pef-guest` object's id (the machine option's value).
    pub object_id: &'static str,
    /// The object type.
    pub object_type: &'static str,
    /// The TPM proxy device's driver.
    pub tpm_proxy_driver: &'static str,
    /// The TPM proxy device's id.
    pub tpm_proxy_id: &'static str,
    /// The host TPM the proxy forwards to (`host-path=`).
    pub tpm_host_path: &'static str,
}

/// Kata's PEF settings (`pefID`, `tpmID`, `tpmHostPath`, `pefSysFirmwareDir`).
pub const PEF: PefProtection = PefProtection {
    sys_firmware_dir: "/sys/firmware/ultravisor/",
    machine_option: "confidential-guest-support",
    object_id: "pef0",
    object_type: "pef-guest",
    tpm_proxy_driver: "spapr-tpm-proxy",
    tpm_proxy_id: "tpm0",
    tpm_host_path: "/dev/tpmrm0",
};

/// The ppc64le backend.
#[derive(Clone, Debug)]
pub struct Ppc64le {
    base: ArchBase,
}

impl Ppc64le {
    /// The backend for `config`: machine `pseries` (the only one), image handling done (a
    /// virtio-blk root, see the [crate docs](crate)).
    pub fn new(config: &HypervisorConfig) -> Result<Self> {
        let options = match config.accelerator {
            Accelerator::Kvm => MACHINE_OPTIONS_KVM,
            Accelerator::Tcg => MACHINE_OPTIONS_TCG,
        };
        let spec = ArchSpec {
            guest_arch: GuestArch::Ppc64le,
            default_machine: DEFAULT_MACHINE,
            machines: vec![MachineSpec::new(PSERIES, options)],
            qemu_paths: vec![(PSERIES, QEMU_PATH)],
            kernel_params: KernelParams::parse(KERNEL_PARAMS).unwrap_or_default(),
            max_vcpus: MAX_VCPUS,
            migration_wait: MIGRATION_WAIT,
            rootfs: RootfsImage::VirtioBlk,
        };
        let mut arch = Ppc64le {
            base: ArchBase::new(spec, config)?,
        };
        arch.handle_image_path(config);
        Ok(arch)
    }
}

impl QemuArch for Ppc64le {
    fn base(&self) -> &ArchBase {
        &self.base
    }

    fn base_mut(&mut self) -> &mut ArchBase {
        &mut self.base
    }

    fn memory_topology(&self, memory_mb: u64, host_memory_mb: u64, slots: u32) -> Memory {
        self.base.generic_memory_topology(
            memory_mb,
            maxmem_host_mb(host_memory_mb, MIN_QEMU),
            slots,
        )
    }

    fn append_iommu(&self, _devices: &mut Vec<Device>) -> Result<()> {
        Err(ArchError::NoIommu {
            reason: "PPC64le does not support appending a vIOMMU".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvarch_arch::bridge::BridgeType;
    use hvarch_arch::testing::{argv, drive, volume, TempImage};
    use proptest::prelude::*;
    use std::path::{Path, PathBuf};

    fn ppc64le(config: HypervisorConfig) -> Ppc64le {
        Ppc64le::new(&config).unwrap()
    }

    fn kvm() -> Ppc64le {
        ppc64le(HypervisorConfig::default())
    }

    fn tcg() -> Ppc64le {
        ppc64le(HypervisorConfig {
            accelerator: Accelerator::Tcg,
            ..HypervisorConfig::default()
        })
    }

    #[test]
    fn constants_of_qemu_ppc64le_go() {
        let arch = kvm();
        assert_eq!(arch.guest_arch(), GuestArch::Ppc64le);
        assert_eq!(arch.qemu_path().unwrap(), PathBuf::from(QEMU_PATH));
        assert_eq!(QEMU_PATH, "/usr/bin/qemu-system-ppc64");
        let machine = arch.machine().unwrap().to_machine(Accelerator::Kvm);
        assert_eq!(machine.machine_type, "pseries");
        assert_eq!(machine.accel, Some(Accelerator::Kvm));
        assert_eq!(machine.options.iter().collect::<Vec<_>>(), [("usb", "off")]);
        assert_eq!(
            arch.kernel_parameters(false).to_string(),
            "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 noreplace-smp reboot=k \
             console=hvc0 console=hvc1 cryptomgr.notests net.ifnames=0 quiet"
        );
        assert_eq!(
            arch.kernel_parameters(true).to_string(),
            format!("{KERNEL_PARAMS} debug")
        );
        assert_eq!(arch.max_vcpus(), 128);
        assert_eq!(arch.migration_wait_timeout(), Duration::from_secs(5));
        assert_eq!(arch.cpu_model().model, "host");
        assert_eq!(
            Ppc64le::new(&HypervisorConfig {
                machine_type: Some("virt".into()),
                ..HypervisorConfig::default()
            })
            .unwrap_err()
            .to_string(),
            "unrecognised machine type: virt (supported: pseries)"
        );
    }

    #[test]
    fn tcg_turns_off_what_only_kvm_has() {
        let arch = tcg();
        let machine = arch.machine().unwrap().to_machine(Accelerator::Tcg);
        assert_eq!(
            machine.options.iter().collect::<Vec<_>>(),
            [
                ("usb", "off"),
                ("cap-cfpc", "broken"),
                ("cap-sbbc", "broken"),
                ("cap-ibs", "broken"),
                ("cap-ccf-assist", "off"),
            ]
        );
        assert_eq!(arch.cpu_model().model, "max");
    }

    #[test]
    fn maxmem_rule_by_qemu_version() {
        assert_eq!(maxmem_host_mb(16384, (2, 10)), 16384);
        assert_eq!(maxmem_host_mb(16383, (2, 10)), 16128);
        assert_eq!(maxmem_host_mb(255, (10, 0)), 0);
        assert_eq!(maxmem_host_mb(16384, (2, 9)), LEGACY_MAXMEM_MB);
        assert_eq!(maxmem_host_mb(65536, (1, 99)), 32256);
        // The backend applies the modern rule (hvarch needs QEMU >= 7.2), then Kata's generic
        // topology: + offset + 1024 MiB for the NVDIMM image.
        let arch = ppc64le(HypervisorConfig {
            memory_offset_mb: 512,
            ..HypervisorConfig::default()
        });
        let memory = arch.memory_topology(2048, 16383, 10);
        assert_eq!(memory.size, 2048 << 20);
        assert_eq!(memory.slots, Some(10));
        assert_eq!(memory.maxmem, Some((16128 + 512 + 1024) << 20));
    }

    proptest! {
        #[test]
        fn maxmem_is_host_memory_aligned_down(host in any::<u64>(), major in 0u32..20, minor in 0u32..20) {
            let max = maxmem_host_mb(host, (major, minor));
            if (major, minor) >= (2, 10) {
                prop_assert_eq!(max % MEMORY_BLOCK_MB, 0);
                prop_assert!(max <= host);
                prop_assert!(host - max < MEMORY_BLOCK_MB);
            } else {
                prop_assert_eq!(max, LEGACY_MAXMEM_MB);
            }
        }
    }

    #[test]
    fn no_viommu_on_ppc64le() {
        let mut devices = Vec::new();
        assert_eq!(
            kvm().append_iommu(&mut devices).unwrap_err().to_string(),
            "PPC64le does not support appending a vIOMMU"
        );
        assert!(devices.is_empty());
    }

    #[test]
    fn bridges_are_pci_on_the_pci_root_bus() {
        let mut arch = kvm();
        arch.bridges(2);
        let kinds: Vec<_> = arch
            .get_bridges()
            .iter()
            .map(|b| (b.id.as_str(), b.bridge_type))
            .collect();
        assert_eq!(
            kinds,
            [
                ("pci-bridge-0", BridgeType::Pci),
                ("pci-bridge-1", BridgeType::Pci)
            ]
        );
        let mut devices = Vec::new();
        arch.append_bridges(&mut devices).unwrap();
        assert_eq!(
            argv(&devices),
            [
                "-device",
                "pci-bridge,bus=pci.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=02",
                "-device",
                "pci-bridge,bus=pci.0,id=pci-bridge-1,chassis_nr=2,shpc=on,addr=03",
            ]
        );
        let slot = arch
            .add_device_to_bridge("virtio-drive0", BridgeType::Pci)
            .unwrap();
        assert_eq!(slot.pci_path().unwrap().to_string(), "02/01");
        // pseries has no PCIe root bus: no root ports to hot-plug into.
        assert!(arch.append_pcie_root_ports(&mut devices, 1).is_err());
    }

    #[test]
    fn image_is_virtio_blk_even_with_nvdimm_enabled() {
        let file = TempImage::new("rootfs.img", 4 << 20);
        let path = file.path().to_path_buf();
        for disable_nvdimm in [false, true] {
            let arch = ppc64le(HypervisorConfig {
                image_path: Some(path.clone()),
                disable_nvdimm,
                ..HypervisorConfig::default()
            });
            assert!(arch.machine().unwrap().options.get("nvdimm").is_none());
            let params = arch.kernel_parameters(false).to_string();
            assert!(
                params.contains("root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro"),
                "{params}"
            );
            assert!(!params.contains("pmem"), "{params}");
            assert!(
                params.ends_with("quiet systemd.show_status=false"),
                "{params}"
            );
            let mut devices = Vec::new();
            arch.append_image(&mut devices, &path).unwrap();
            let args = argv(&devices);
            assert_eq!(args[2], "-device");
            assert!(args[3].starts_with("virtio-blk-pci,"), "{args:?}");
        }
    }

    #[test]
    fn initrd_boot_adds_no_root() {
        let arch = ppc64le(HypervisorConfig {
            initrd_path: Some("/boot/initrd.img".into()),
            ..HypervisorConfig::default()
        });
        assert!(!arch.kernel_parameters(false).contains("root"));
    }

    #[test]
    fn everything_else_is_the_base() {
        let mut arch = kvm();
        let caps = arch.capabilities();
        assert!(caps.block_device_hotplug && caps.multi_queue && caps.fs_sharing);
        assert!(arch.supports_guest_memory_hotplug());
        assert_eq!(arch.cpu_topology(1, 4).maxcpus, Some(4));
        assert_eq!(arch.migration_capabilities().len(), 1);
        let mut devices = Vec::new();
        arch.append_console(&mut devices, Path::new("/run/vm/console.sock"))
            .unwrap();
        arch.append_9p_volume(&mut devices, &volume("shared"))
            .unwrap();
        arch.append_block_device(&mut devices, &drive("drive0"))
            .unwrap();
        let before = devices.clone();
        arch.place_devices(&mut devices).unwrap();
        assert_eq!(devices, before, "QEMU numbers PCI slots itself");
        let args = argv(&devices);
        let with = |prefix: &str| {
            args.iter()
                .find(|a| a.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {args:?}"))
                .clone()
        };
        assert_eq!(
            with("virtio-serial"),
            "virtio-serial-pci,id=serial0,max_ports=2"
        );
        assert!(with("local,id=extra-9p-shared").ends_with("multidevs=remap"));
        assert!(with("virtio-blk").starts_with("virtio-blk-pci,id=drive0,"));
    }

    #[test]
    fn pef_settings_are_katas() {
        assert_eq!(
            (PEF.machine_option, PEF.object_id, PEF.object_type),
            ("confidential-guest-support", "pef0", "pef-guest")
        );
        assert_eq!(
            (PEF.tpm_proxy_driver, PEF.tpm_proxy_id, PEF.tpm_host_path),
            ("spapr-tpm-proxy", "tpm0", "/dev/tpmrm0")
        );
        assert_eq!(PEF.sys_firmware_dir, "/sys/firmware/ultravisor/");
    }
}

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
