//! # hvarch-s390x
//!
//! The s390x backend: Kata's `qemu_s390x.go` as a [`QemuArch`] implementation, for the IBM Z
//! machine `s390-ccw-virtio`, where devices sit on the channel subsystem (CCW) instead of PCI.
//!
//! It sits beside the other backends on top of `hvarch-arch`: the facade (`hvarch::backend`)
//! returns it for `GuestArch::S390x`, and `hvarch::native` names it on `s390x` hosts.
//!
//! # CCW device numbers
//!
//! Every virtio device is a `virtio-*-ccw` with a device number `devno=fe.<ssid>.<devno>`
//! (QEMU's virtual channel subsystem `fe`, a subchannel set, a 16-bit device number). Kata
//! takes one slot of a CCW "bridge" per device and formats the number from it; so does
//! hvarch. The base builds every device on the CCW transport on this machine
//! ([`ArchBase::virtio`]); [`QemuArch::place_devices`] then numbers the cold-plugged devices
//! from the bridge in command-line order (`fe.0.0001` for the console's virtio-serial, …),
//! and the hotplug engine numbers a hot-plugged device from the next free slot. A device that
//! comes with its own number keeps it, and its slot is reserved.
//!
//! What [`S390x`] overrides (everything else is the base's, on CCW):
//!
//! | method | s390x behaviour |
//! |---|---|
//! | [`QemuArch::bridges`] | one CCW bridge `ccw-bridge-0` (bookkeeping for device numbers; no device on the command line) |
//! | [`QemuArch::place_devices`] | CCW device numbers for the cold-plugged devices |
//! | [`QemuArch::append_console`] | `virtio-serial-ccw` without `max_ports` (Kata's s390x console) |
//! | [`QemuArch::append_network`] | never vhost-net, whatever `disable_vhost_net` says |
//! | [`QemuArch::append_vhost_user_device`] | an error: "No vhost-user devices supported on s390x" |
//! | [`QemuArch::append_iommu`] | an error: "S390x does not support appending a vIOMMU" |
//! | [`QemuArch::memory_topology`] | boot memory only: no hotplug slots, no `maxmem` |
//! | [`QemuArch::supports_guest_memory_hotplug`] | false: `s390-ccw-virtio` has no `pc-dimm` |
//!
//! Its constants: `/usr/bin/qemu-system-s390x`, machine `s390-ccw-virtio` (no options;
//! Kata's `accel=kvm` is the accelerator), kernel parameters `console=ttysclp0`, 248 vCPUs
//! (QEMU's `S390_MAX_CPUS`), a 5 s migration wait. The rootfs image is always a virtio-blk
//! disk (`root=/dev/vda1`; never an NVDIMM). No device gets a `romfile`, and nesting never
//! sets `disable-modern` (both are virtio-pci settings).
//!
//! ```
//! use hvarch_arch::{arch::QemuArch, settings::HypervisorConfig};
//! use hvarch_s390x::S390x;
//!
//! let mut arch = S390x::new(&HypervisorConfig::default()).unwrap();
//! arch.bridges(1);
//! let mut devices = Vec::new();
//! arch.append_console(&mut devices, "/run/vm/console.sock".as_ref()).unwrap();
//! arch.place_devices(&mut devices).unwrap();
//! let devno = devices[0].virtio().and_then(|v| v.devno.clone());
//! assert_eq!(devno.as_deref(), Some("fe.0.0001"));
//! assert_eq!(arch.kernel_parameters(false).to_string(), "console=ttysclp0 quiet");
//! assert!(!arch.supports_guest_memory_hotplug());
//! ```
//!
//! # Kata's quirks, and where hvarch departs
//!
//! - **The device number of a hot-plugged NIC.** Kata 1.x's network hotplug formatted the
//!   number as `fmt.Sprintf("fe.%x.%x", bridge.Addr, addr)` with `addr` the slot *string*, so
//!   `%x` hex-encoded its characters (slot `"0001"` became `fe.0.30303031`), and it took the
//!   slot from a PCI bridge even on s390x. hvarch takes the slot from the CCW bridge and
//!   formats the number ([`hvarch_arch::bridge::BridgeSlot::ccw_devno`]).
//! - **One CCW bridge.** Kata creates `default_bridges` CCW bridges, all with address 0, so a
//!   second bridge would hand out the first one's device numbers again, and with
//!   `default_bridges = 0` no device could be numbered at all. A CCW bridge is not a device:
//!   hvarch always keeps exactly one, whose 65,535 slots outnumber Kata's 5 × 30 PCI slots.
//! - **No memory hotplug, so no `slots`/`maxmem`.** Kata kept the base's `-m …,slots=,maxmem=`
//!   on s390x while refusing memory hotplug (`s390-ccw-virtio` has no `pc-dimm`). QEMU 10
//!   accepts them, but only to reserve device memory for virtio-mem, which this backend does
//!   not offer; hvarch gives the guest its boot memory only.
//! - Guest RAM is attached with `-machine memory-backend=` (s390x has no NUMA nodes): the
//!   facade's choice for machines without NUMA, as govmm's `isDimmSupported` made it.
#![deny(missing_docs)]

use std::path::Path;
use std::time::Duration;

use hvarch_arch::arch::{mib, ArchBase, ArchSpec, QemuArch, RootfsImage};
use hvarch_arch::guest_arch::GuestArch;
use hvarch_arch::machine::{MachineSpec, S390_CCW_VIRTIO};
use hvarch_arch::resources::{NetEndpoint, VhostUserDevice};
use hvarch_arch::settings::HypervisorConfig;
use hvarch_arch::{ArchError, Result};
use hvarch_devices::chardev::{CharBackend, CharDevice, Chardev, SerialController};
use hvarch_devices::config::Memory;
use hvarch_devices::kernel_params::KernelParams;
use hvarch_devices::Device;

/// The default QEMU binary.
pub const QEMU_PATH: &str = "/usr/bin/qemu-system-s390x";
/// The machine type.
pub const DEFAULT_MACHINE: &str = S390_CCW_VIRTIO;
/// The architecture's kernel parameters: the console is the SCLP line-mode terminal.
pub const KERNEL_PARAMS: &str = "console=ttysclp0";
/// The most vCPUs QEMU gives an s390x guest (`S390_MAX_CPUS`).
pub const MAX_VCPUS: u32 = 248;
/// How long to wait for a migration.
pub const MIGRATION_WAIT: Duration = Duration::from_secs(5);
/// The id of the one CCW bridge.
pub const CCW_BRIDGE_ID: &str = "ccw-bridge-0";

/// The s390x backend.
#[derive(Clone, Debug)]
pub struct S390x {
    base: ArchBase,
}

impl S390x {
    /// The backend for `config`: machine `s390-ccw-virtio` (the only one), and for an image
    /// a virtio-blk root (`root=/dev/vda1` and the systemd parameters; never an NVDIMM).
    pub fn new(config: &HypervisorConfig) -> Result<Self> {
        let spec = ArchSpec {
            guest_arch: GuestArch::S390x,
            default_machine: DEFAULT_MACHINE,
            machines: vec![MachineSpec::new(S390_CCW_VIRTIO, "")],
            qemu_paths: vec![(S390_CCW_VIRTIO, QEMU_PATH)],
            kernel_params: KernelParams::parse(KERNEL_PARAMS).unwrap_or_default(),
            max_vcpus: MAX_VCPUS,
            migration_wait: MIGRATION_WAIT,
            rootfs: RootfsImage::VirtioBlk,
        };
        let mut arch = S390x {
            base: ArchBase::new(spec, config)?,
        };
        arch.handle_image_path(config);
        Ok(arch)
    }
}

impl QemuArch for S390x {
    fn base(&self) -> &ArchBase {
        &self.base
    }

    fn base_mut(&mut self) -> &mut ArchBase {
        &mut self.base
    }

    fn bridges(&mut self, _number: u32) {
        // Kata's genericBridges (CCW on this machine), always exactly one: see the crate docs.
        self.base.generic_bridges(1);
    }

    fn place_devices(&mut self, devices: &mut [Device]) -> Result<()> {
        self.base.place_ccw_devices(devices)
    }

    fn memory_topology(&self, memory_mb: u64, _host_memory_mb: u64, _slots: u32) -> Memory {
        Memory::size(mib(memory_mb))
    }

    fn append_console(&self, devices: &mut Vec<Device>, path: &Path) -> Result<()> {
        let mut serial = SerialController::new("serial0");
        serial.virtio = self.base.virtio();
        devices.push(serial.into());
        let chardev = Chardev::new("charconsole0", CharBackend::server_socket(path));
        devices.push(CharDevice::console("console0", chardev).into());
        Ok(())
    }

    fn append_network(&mut self, devices: &mut Vec<Device>, endpoint: &NetEndpoint) -> Result<()> {
        let device = self.base.network_device(endpoint, false)?;
        self.base.network_index += 1;
        devices.push(device.into());
        Ok(())
    }

    fn append_vhost_user_device(
        &self,
        _devices: &mut Vec<Device>,
        _attrs: &VhostUserDevice,
    ) -> Result<()> {
        Err(ArchError::Unsupported {
            reason: "No vhost-user devices supported on s390x".into(),
        })
    }

    fn append_iommu(&self, _devices: &mut Vec<Device>) -> Result<()> {
        Err(ArchError::NoIommu {
            reason: "S390x does not support appending a vIOMMU".into(),
        })
    }

    fn supports_guest_memory_hotplug(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvarch_arch::bridge::BridgeType;
    use hvarch_arch::resources::{EndpointKind, RngDev, VSock, VhostUserKind};
    use hvarch_arch::testing::{argv, drive, tap, volume, TempImage};
    use hvarch_devices::config::Accelerator;
    use hvarch_devices::transport::{Transport, VirtioOpts};
    use proptest::prelude::*;
    use std::path::PathBuf;

    fn s390x(config: HypervisorConfig) -> S390x {
        let mut arch = S390x::new(&config).unwrap();
        arch.bridges(config.default_bridges);
        arch
    }

    fn kvm() -> S390x {
        s390x(HypervisorConfig::default())
    }

    #[test]
    fn constants_of_qemu_s390x_go() {
        let arch = kvm();
        assert_eq!(arch.guest_arch(), GuestArch::S390x);
        assert_eq!(arch.qemu_path().unwrap(), PathBuf::from(QEMU_PATH));
        assert_eq!(QEMU_PATH, "/usr/bin/qemu-system-s390x");
        for accel in [Accelerator::Kvm, Accelerator::Tcg] {
            let arch = s390x(HypervisorConfig {
                accelerator: accel,
                ..HypervisorConfig::default()
            });
            let machine = arch.machine().unwrap().to_machine(accel);
            assert_eq!(machine.machine_type, "s390-ccw-virtio");
            assert!(machine.options.is_empty(), "{accel:?}");
        }
        assert_eq!(
            arch.kernel_parameters(false).to_string(),
            "console=ttysclp0 quiet"
        );
        assert_eq!(
            arch.kernel_parameters(true).to_string(),
            "console=ttysclp0 debug"
        );
        assert_eq!(arch.max_vcpus(), 248);
        assert_eq!(arch.migration_wait_timeout(), Duration::from_secs(5));
        assert_eq!(arch.cpu_model().model, "host");
        assert!(arch.capabilities().block_device_hotplug);
        assert_eq!(
            S390x::new(&HypervisorConfig {
                machine_type: Some("pseries".into()),
                ..HypervisorConfig::default()
            })
            .unwrap_err()
            .to_string(),
            "unrecognised machine type: pseries (supported: s390-ccw-virtio)"
        );
    }

    #[test]
    fn one_ccw_bridge_whatever_the_count() {
        for count in [0, 1, 5] {
            let arch = s390x(HypervisorConfig {
                default_bridges: count,
                ..HypervisorConfig::default()
            });
            let bridges: Vec<_> = arch
                .get_bridges()
                .iter()
                .map(|b| (b.id.as_str(), b.bridge_type, b.addr))
                .collect();
            assert_eq!(bridges, [(CCW_BRIDGE_ID, BridgeType::Ccw, 0)], "{count}");
        }
        // A CCW bridge is not a device.
        let mut devices = Vec::new();
        kvm().append_bridges(&mut devices).unwrap();
        assert!(devices.is_empty());
    }

    #[test]
    fn every_cold_plugged_device_is_numbered_in_order() {
        let mut arch = kvm();
        // Nested or not, CCW devices never get disable-modern.
        arch.enable_nesting_checks();
        let mut devices = Vec::new();
        arch.append_console(&mut devices, Path::new("/run/vm/console.sock"))
            .unwrap();
        arch.append_scsi_controller(&mut devices, false).unwrap();
        arch.append_rng_device(
            &mut devices,
            &RngDev {
                id: "rng0".into(),
                filename: "/dev/urandom".into(),
            },
        )
        .unwrap();
        arch.append_9p_volume(&mut devices, &volume("shared"))
            .unwrap();
        arch.append_vsock(
            &mut devices,
            &VSock {
                context_id: 3,
                vhost_fd: None,
            },
        )
        .unwrap();
        arch.append_network(&mut devices, &tap("tap0")).unwrap();
        arch.append_block_device(&mut devices, &drive("drive0"))
            .unwrap();
        arch.place_devices(&mut devices).unwrap();
        let frontends: Vec<String> = argv(&devices)
            .windows(2)
            .filter(|w| w[0] == "-device")
            .map(|w| w[1].clone())
            .collect();
        assert_eq!(
            frontends,
            [
                "virtio-serial-ccw,id=serial0,devno=fe.0.0001",
                "virtconsole,chardev=charconsole0,id=console0",
                "virtio-scsi-ccw,id=scsi0,devno=fe.0.0002",
                "virtio-rng-ccw,id=rng0-dev,rng=rng0,devno=fe.0.0003",
                "virtio-9p-ccw,id=extra-9p-shared-dev,fsdev=extra-9p-shared,mount_tag=shared,\
                 devno=fe.0.0004",
                "vhost-vsock-ccw,id=vsock-3,guest-cid=3,devno=fe.0.0005",
                "virtio-net-ccw,id=network-0,netdev=network-0-netdev,mac=02:00:ca:fe:00:01,\
                 devno=fe.0.0006",
                "virtio-blk-ccw,id=drive0,drive=drive0-node,share-rw=on,devno=fe.0.0007",
            ]
        );
        // The bridge knows every number it gave, so hotplug takes the next one.
        let slot = arch
            .add_device_to_bridge("virtio-drive1", BridgeType::Ccw)
            .unwrap();
        assert_eq!(slot.ccw_devno().unwrap(), "fe.0.0008");
        assert_eq!(slot.ccw_guest_address().unwrap(), "0.0.0008");
    }

    #[test]
    fn console_has_no_max_ports() {
        let mut devices = Vec::new();
        kvm()
            .append_console(&mut devices, Path::new("/c.sock"))
            .unwrap();
        let Device::SerialController(serial) = &devices[0] else {
            panic!("{:?}", devices[0]);
        };
        assert_eq!(serial.max_ports, None);
        assert_eq!(serial.virtio.transport, Transport::Ccw);
    }

    #[test]
    fn network_never_uses_vhost() {
        let mut arch = kvm();
        arch.enable_vhost_net();
        assert!(arch.base().vhost);
        let mut devices = Vec::new();
        arch.append_network(&mut devices, &tap("tap0")).unwrap();
        arch.append_network(&mut devices, &tap("tap1")).unwrap();
        arch.place_devices(&mut devices).unwrap();
        let args = argv(&devices);
        assert_eq!(
            args[1],
            "tap,id=network-0-netdev,ifname=tap0,downscript=no,script=no"
        );
        assert!(args[5].starts_with("tap,id=network-1-netdev,ifname=tap1"));
        assert_eq!(arch.base().network_index, 2);
        let mut other = tap("x");
        other.kind = EndpointKind::Other;
        assert!(arch.append_network(&mut devices, &other).is_err());
        assert_eq!(arch.base().network_index, 2);
    }

    #[test]
    fn refusals() {
        let mut devices = Vec::new();
        let attrs = VhostUserDevice {
            kind: VhostUserKind::Blk,
            socket_path: "/run/vhost.sock".into(),
            dev_id: "blk0".into(),
            mac: None,
            tag: None,
        };
        assert_eq!(
            kvm()
                .append_vhost_user_device(&mut devices, &attrs)
                .unwrap_err()
                .to_string(),
            "No vhost-user devices supported on s390x"
        );
        assert_eq!(
            kvm().append_iommu(&mut devices).unwrap_err().to_string(),
            "S390x does not support appending a vIOMMU"
        );
        assert!(devices.is_empty());
        assert!(!kvm().supports_guest_memory_hotplug());
        // No root ports: the machine has no PCIe root bus.
        assert!(kvm().append_pcie_root_ports(&mut devices, 1).is_err());
    }

    #[test]
    fn memory_has_no_hotplug_room() {
        let arch = s390x(HypervisorConfig {
            memory_offset_mb: 1024,
            ..HypervisorConfig::default()
        });
        let memory = arch.memory_topology(2048, 16384, 10);
        assert_eq!(memory, Memory::size(2048 << 20));
    }

    #[test]
    fn image_is_a_ccw_disk() {
        let file = TempImage::new("rootfs.img", 4 << 20);
        let path = file.path().to_path_buf();
        for disable_nvdimm in [false, true] {
            let mut arch = s390x(HypervisorConfig {
                image_path: Some(path.clone()),
                disable_nvdimm,
                ..HypervisorConfig::default()
            });
            assert!(arch.machine().unwrap().options.get("nvdimm").is_none());
            assert_eq!(
                arch.kernel_parameters(false).to_string(),
                "console=ttysclp0 root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro \
                 rootfstype=ext4 quiet systemd.show_status=false"
            );
            let mut devices = Vec::new();
            arch.append_image(&mut devices, &path).unwrap();
            arch.place_devices(&mut devices).unwrap();
            let args = argv(&devices);
            assert!(args[3].starts_with("virtio-blk-ccw,id=image-"), "{args:?}");
            assert!(
                args[3].ends_with(",share-rw=on,devno=fe.0.0001"),
                "{args:?}"
            );
        }
    }

    #[derive(Debug, Clone)]
    enum Cold {
        Rng,
        Drive,
        Nic,
        /// A device bringing its own device number (slot on subchannel set 0).
        Numbered(u32),
    }

    proptest! {
        /// Whatever devices a VM cold-plugs, and whatever numbers some of them bring, every
        /// CCW device ends up with a number of its own, each held on the bridge by its id.
        #[test]
        fn device_numbers_are_unique(
            cold in proptest::collection::vec(
                prop_oneof![
                    Just(Cold::Rng),
                    Just(Cold::Drive),
                    Just(Cold::Nic),
                    (1u32..24).prop_map(Cold::Numbered),
                ],
                0..24,
            ),
        ) {
            let mut arch = kvm();
            let mut devices = Vec::new();
            let mut taken = std::collections::BTreeSet::new();
            for (i, c) in cold.iter().enumerate() {
                match c {
                    Cold::Rng => arch
                        .append_rng_device(&mut devices, &RngDev {
                            id: format!("rng{i}"),
                            filename: "/dev/urandom".into(),
                        })
                        .unwrap(),
                    Cold::Drive => arch.append_block_device(&mut devices, &drive(&format!("d{i}"))).unwrap(),
                    Cold::Nic => arch.append_network(&mut devices, &tap(&format!("tap{i}"))).unwrap(),
                    Cold::Numbered(slot) => {
                        // Two devices may not bring the same number: that one is refused.
                        if !taken.insert(*slot) {
                            continue;
                        }
                        let mut balloon = hvarch_devices::balloon::BalloonDevice::new(format!("b{i}"));
                        balloon.virtio = VirtioOpts {
                            devno: Some(format!("fe.0.{slot:04x}")),
                            ..VirtioOpts::on(Transport::Ccw)
                        };
                        devices.push(balloon.into());
                    }
                }
            }
            arch.place_devices(&mut devices).unwrap();
            let bridge = arch.get_bridges().iter().next().unwrap().clone();
            let mut seen = std::collections::BTreeSet::new();
            for device in &devices {
                let devno = device.virtio().and_then(|v| v.devno.clone()).unwrap();
                prop_assert!(seen.insert(devno.clone()), "{} given twice", devno);
                let slot = u32::from_str_radix(devno.trim_start_matches("fe.0."), 16).unwrap();
                prop_assert!(slot >= 1);
                let id = hvarch_devices::QemuDevice::id(device).unwrap();
                prop_assert_eq!(bridge.devices.get(&slot).map(String::as_str), Some(id));
            }
            prop_assert_eq!(bridge.devices.len(), devices.len());
        }
    }
}

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
