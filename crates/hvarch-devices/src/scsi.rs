//! SCSI: the virtio-scsi controller ([`ScsiController`]) and the disks on its bus
//! ([`ScsiDisk`], `scsi-hd` / `scsi-cd` over a [`BlockBackend`]).
//!
//! Kata cold-plugs one controller (`scsi0`, its bus is `scsi0.0`) when the block device driver
//! is `virtio-scsi`, and hot-plugs container disks onto it as `scsi-hd` devices.

use serde::{Deserialize, Serialize};

use crate::block::BlockBackend;
use crate::device::QemuDevice;
use crate::error::{invalid, Result};
use crate::id::{check_id, check_opt_id};
use crate::part::Part;
use crate::pci::PciAddr;
use crate::props::Props;
use crate::transport::VirtioOpts;

/// The highest SCSI target id QEMU's virtio-scsi bus accepts (`scsi-id=`).
pub const MAX_SCSI_ID: u32 = 255;
/// The highest LUN QEMU's virtio-scsi bus accepts (`lun=`).
pub const MAX_LUN: u32 = 16383;

/// A virtio-scsi controller (`virtio-scsi-pci` / `-ccw` / `-device`).
///
/// Its SCSI bus is named `<id>.0`: that is what a [`ScsiDisk`]'s `bus` names.
///
/// ```
/// use hvarch_devices::scsi::ScsiController;
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let mut scsi = ScsiController::new("scsi0");
/// scsi.iothread = Some("iothread0".into());
/// let parts = scsi.parts().unwrap();
/// assert_eq!(
///     parts[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-device", "virtio-scsi-pci,id=scsi0,iothread=iothread0"],
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScsiController {
    /// The device id; the controller's SCSI bus is `<id>.0`.
    pub id: String,
    /// The bus (a bridge or root port id).
    #[serde(default)]
    pub bus: Option<String>,
    /// The address on the bus (PCI only).
    #[serde(default)]
    pub addr: Option<PciAddr>,
    /// The iothread that runs the controller's I/O (`iothread=`, an `-object iothread` id).
    #[serde(default)]
    pub iothread: Option<String>,
    /// Number of request virtqueues (`num_queues=`).
    #[serde(default)]
    pub num_queues: Option<u32>,
    /// Transport settings.
    #[serde(default)]
    pub virtio: VirtioOpts,
}

impl ScsiController {
    /// A virtio-scsi-pci controller `id`.
    pub fn new(id: impl Into<String>) -> Self {
        ScsiController {
            id: id.into(),
            bus: None,
            addr: None,
            iothread: None,
            num_queues: None,
            virtio: VirtioOpts::default(),
        }
    }

    /// The name of the controller's SCSI bus (`<id>.0`), for [`ScsiDisk::bus`].
    pub fn scsi_bus(&self) -> String {
        format!("{}.0", self.id)
    }
}

impl QemuDevice for ScsiController {
    fn kind(&self) -> &'static str {
        "virtio-scsi"
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        check_opt_id(what, "bus", self.bus.as_deref())?;
        check_opt_id(what, "iothread", self.iothread.as_deref())?;
        if self.num_queues == Some(0) {
            return Err(invalid(what, "num_queues", 0, "must be at least 1"));
        }
        self.virtio.validate_with_addr(what, self.addr)
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        // govmm's order: id, bus, addr, disable-modern, iothread, then the other transport
        // properties.
        emit(Part::device(
            self.virtio.driver("virtio-scsi"),
            Props::new()
                .with("id", self.id.as_str())
                .opt("bus", self.bus.as_deref())
                .opt("addr", self.addr)
                .flag("disable-modern", self.virtio.disable_modern)
                .opt("iothread", self.iothread.as_deref())
                .opt("num_queues", self.num_queues)
                .extend(self.virtio.props_after_disable_modern()),
        ))
    }
}

/// Which SCSI device a [`ScsiDisk`] is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScsiDriver {
    /// A hard disk (`scsi-hd`).
    #[default]
    ScsiHd,
    /// A CD-ROM (`scsi-cd`).
    ScsiCd,
}

impl ScsiDriver {
    /// The QEMU driver name.
    pub fn as_str(self) -> &'static str {
        match self {
            ScsiDriver::ScsiHd => "scsi-hd",
            ScsiDriver::ScsiCd => "scsi-cd",
        }
    }
}

/// A disk on a virtio-scsi bus (`scsi-hd` / `scsi-cd`) over its own [`BlockBackend`].
///
/// Hot plug sends `blockdev-add` then `device_add` (govmm's `ExecuteSCSIDeviceAdd`).
///
/// ```
/// use hvarch_devices::block::{BlockBackend, BlockProtocol};
/// use hvarch_devices::scsi::ScsiDisk;
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let mut disk = ScsiDisk::new("sd0", "scsi0.0", BlockBackend::new("sd0-node",
///     BlockProtocol::HostDevice { filename: "/dev/sdb".into() }));
/// disk.scsi_id = Some(0);
/// disk.lun = Some(1);
/// let args: Vec<String> = disk.parts().unwrap().iter()
///     .flat_map(|p| p.to_args(Syntax::Options, &mut NoFds).unwrap()).collect();
/// assert_eq!(args, [
///     "-blockdev", "driver=raw,node-name=sd0-node,file.driver=host_device,file.filename=/dev/sdb",
///     "-device", "scsi-hd,id=sd0,drive=sd0-node,bus=scsi0.0,scsi-id=0,lun=1",
/// ]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScsiDisk {
    /// The device id.
    pub id: String,
    /// `scsi-hd` (default) or `scsi-cd`.
    #[serde(default)]
    pub driver: ScsiDriver,
    /// The SCSI bus, `<controller id>.0` (e.g. `scsi0.0`).
    pub bus: String,
    /// The node the disk reads and writes.
    pub backend: BlockBackend,
    /// The SCSI target id, 0–255 (`scsi-id=`).
    #[serde(default)]
    pub scsi_id: Option<u32>,
    /// The logical unit number, 0–16383 (`lun=`).
    #[serde(default)]
    pub lun: Option<u32>,
    /// Let other users of the image write too (`share-rw=on`).
    #[serde(default)]
    pub share_rw: bool,
    /// The serial number the guest sees (`serial=`; any text, escaped).
    #[serde(default)]
    pub serial: Option<String>,
    /// Boot order (`bootindex=`).
    #[serde(default)]
    pub bootindex: Option<u32>,
}

impl ScsiDisk {
    /// A `scsi-hd` disk `id` on SCSI bus `bus` over `backend`.
    pub fn new(id: impl Into<String>, bus: impl Into<String>, backend: BlockBackend) -> Self {
        ScsiDisk {
            id: id.into(),
            driver: ScsiDriver::ScsiHd,
            bus: bus.into(),
            backend,
            scsi_id: None,
            lun: None,
            share_rw: false,
            serial: None,
            bootindex: None,
        }
    }
}

impl QemuDevice for ScsiDisk {
    fn kind(&self) -> &'static str {
        self.driver.as_str()
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        check_id(what, "bus", &self.bus)?;
        self.backend.validate()?;
        if let Some(id) = self.scsi_id.filter(|&id| id > MAX_SCSI_ID) {
            return Err(invalid(what, "scsi_id", id, "must be at most 255"));
        }
        if let Some(lun) = self.lun.filter(|&lun| lun > MAX_LUN) {
            return Err(invalid(what, "lun", lun, "must be at most 16383"));
        }
        Ok(())
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        let device = Part::device(
            self.driver.as_str(),
            Props::new()
                .with("id", self.id.as_str())
                .with("drive", self.backend.node_name.as_str())
                .with("bus", self.bus.as_str())
                .opt("scsi-id", self.scsi_id)
                .opt("lun", self.lun)
                .flag("share-rw", self.share_rw)
                .opt("serial", self.serial.as_deref())
                .opt("bootindex", self.bootindex),
        );
        emit(self.backend.part_of_valid()?)?;
        emit(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockProtocol;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{
        args, bad_id, block_backend, id, nul_text, qmp_adds, text, transport, Cases,
    };
    use crate::transport::Transport;
    use proptest::prelude::*;
    use serde_json::json;

    /// govmm: `-device virtio-scsi-pci,id=foo,disable-modern=false,romfile=efi-virtio.rom`.
    /// Difference: `disable-modern` is written only when on (off is QEMU's default).
    #[test]
    fn govmm_reference_controller() {
        let mut scsi = ScsiController::new("foo");
        scsi.virtio.romfile = Some("efi-virtio.rom".into());
        assert_eq!(
            args(&scsi),
            ["-device", "virtio-scsi-pci,id=foo,romfile=efi-virtio.rom"]
        );
    }

    /// govmm: `-device virtio-scsi-pci,id=foo,bus=pci.0,addr=00:04.0,disable-modern=true,
    /// iothread=iothread1,romfile=efi-virtio.rom`. Differences: `addr` is a [`PciAddr`]
    /// written as QEMU reads it (`04`, not govmm's verbatim `00:04.0`, which QEMU's `addr`
    /// property does not parse); `disable-modern=on`.
    #[test]
    fn govmm_reference_controller_with_bus_addr_iothread() {
        let mut scsi = ScsiController::new("foo");
        scsi.bus = Some("pci.0".into());
        scsi.addr = Some(PciAddr::slot_only(4).unwrap());
        scsi.iothread = Some("iothread1".into());
        scsi.virtio.disable_modern = true;
        scsi.virtio.romfile = Some("efi-virtio.rom".into());
        assert_eq!(
            args(&scsi),
            [
                "-device",
                "virtio-scsi-pci,id=foo,bus=pci.0,addr=04,disable-modern=on,\
                 iothread=iothread1,romfile=efi-virtio.rom"
            ]
        );
    }

    /// govmm wrote `,,iommu_platform=on` on CCW (a doubled comma); here it is one property.
    #[test]
    fn ccw_controller_has_no_double_comma() {
        let mut scsi = ScsiController::new("scsi0");
        scsi.iothread = Some("io0".into());
        scsi.virtio = VirtioOpts {
            iommu_platform: true,
            devno: Some("fe.0.0002".into()),
            ..VirtioOpts::on(Transport::Ccw)
        };
        assert_eq!(
            args(&scsi)[1],
            "virtio-scsi-ccw,id=scsi0,iothread=io0,iommu_platform=on,devno=fe.0.0002"
        );
        scsi.virtio = VirtioOpts::on(Transport::Mmio);
        scsi.num_queues = Some(2);
        assert_eq!(
            args(&scsi)[1],
            "virtio-scsi-device,id=scsi0,iothread=io0,num_queues=2"
        );
    }

    #[test]
    fn controller_json_syntax() {
        let mut scsi = ScsiController::new("scsi0");
        scsi.num_queues = Some(4);
        scsi.virtio.disable_modern = true;
        let part = &scsi.parts().unwrap()[0];
        assert_eq!(
            part.render(Syntax::Json, &mut NoFds).unwrap(),
            r#"{"driver":"virtio-scsi-pci","id":"scsi0","disable-modern":true,"num_queues":4}"#
        );
        assert_eq!(scsi.scsi_bus(), "scsi0.0");
    }

    fn disk() -> ScsiDisk {
        let mut disk = ScsiDisk::new(
            "scsi-disk0",
            "scsi0.0",
            BlockBackend::new(
                "drive0",
                BlockProtocol::HostDevice {
                    filename: "/dev/sdb".into(),
                },
            ),
        );
        disk.scsi_id = Some(1);
        disk.lun = Some(0);
        disk.share_rw = true;
        disk
    }

    /// govmm `ExecuteSCSIDeviceAdd`: `{"id","driver","drive","bus","scsi-id","lun"}` plus
    /// `share-rw` (a boolean here, govmm sent the string `"on"`).
    #[test]
    fn disk_qmp_matches_govmm_scsi_device_add() {
        let disk = disk();
        let parts = disk.parts().unwrap();
        let calls = qmp_adds(&disk);
        assert_eq!(calls[0].command, "blockdev-add");
        assert_eq!(calls[1].command, "device_add");
        assert_eq!(
            calls[1].arguments,
            json!({"id": "scsi-disk0", "driver": "scsi-hd", "drive": "drive0",
                   "bus": "scsi0.0", "scsi-id": 1, "lun": 0, "share-rw": true})
        );
        let dels: Vec<_> = parts.iter().rev().map(|p| p.qmp_del().unwrap()).collect();
        assert_eq!(dels[0].command, "device_del");
        assert_eq!(dels[1].command, "blockdev-del");
    }

    #[test]
    fn cdrom_renders() {
        let mut cd = disk();
        cd.driver = ScsiDriver::ScsiCd;
        cd.serial = Some("a,b".into());
        assert_eq!(cd.kind(), "scsi-cd");
        assert_eq!(
            args(&cd)[3],
            "scsi-cd,id=scsi-disk0,drive=drive0,bus=scsi0.0,scsi-id=1,lun=0,share-rw=on,serial=a,,b"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let mut d = disk();
        d.scsi_id = Some(256);
        assert_eq!(
            d.validate().unwrap_err().to_string(),
            "scsi-hd: invalid `scsi_id` \"256\": must be at most 255"
        );
        d.scsi_id = Some(255);
        d.lun = Some(16384);
        assert!(d.validate().unwrap_err().to_string().contains("`lun`"));
        d.lun = Some(16383);
        d.validate().unwrap();
        d.bus = "scsi0.0,x=1".into();
        assert!(d.validate().unwrap_err().to_string().contains("bus"));

        let mut c = ScsiController::new("c");
        c.iothread = Some("io thread".into());
        assert!(c.validate().unwrap_err().to_string().contains("iothread"));
        c.iothread = None;
        c.num_queues = Some(0);
        assert!(c.validate().unwrap_err().to_string().contains("num_queues"));
        c.num_queues = None;
        c.addr = Some(PciAddr::slot_only(3).unwrap());
        c.virtio = VirtioOpts::on(Transport::Mmio);
        assert!(c.validate().unwrap_err().to_string().contains("addr"));
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = r#"
            id = "scsi0"
            iothread = "io0"
            addr = "05"
            num_queues = 2
            virtio = { disable_modern = true }
        "#;
        let scsi: ScsiController = toml::from_str(text).unwrap();
        assert_eq!(scsi.num_queues, Some(2));
        let again: ScsiController = toml::from_str(&toml::to_string(&scsi).unwrap()).unwrap();
        assert_eq!(again, scsi);
        assert!(toml::from_str::<ScsiController>("id = \"s\"\nbogus = 1").is_err());

        let text = r#"
            id = "sd0"
            driver = "scsi-cd"
            bus = "scsi0.0"
            scsi_id = 2
            lun = 3
            [backend]
            node_name = "sd0-node"
            read_only = true
            protocol = { driver = "file", filename = "/images/a.iso" }
        "#;
        let d: ScsiDisk = toml::from_str(text).unwrap();
        assert_eq!(d.driver, ScsiDriver::ScsiCd);
        let again: ScsiDisk = toml::from_str(&toml::to_string(&d).unwrap()).unwrap();
        assert_eq!(again, d);
        assert!(toml::from_str::<ScsiDisk>("id = \"d\"\nbus = \"b\"\nlba = 1").is_err());
        let device: crate::Device = serde_json::from_str(
            r#"{"type": "scsi-controller", "id": "scsi0", "iothread": "io0"}"#,
        )
        .unwrap();
        assert_eq!(device.kind(), "virtio-scsi");
    }

    #[test]
    fn disk_parts_round_trip_and_faults_name_their_field() {
        let driver = prop::sample::select(vec![ScsiDriver::ScsiHd, ScsiDriver::ScsiCd]);
        let disk = (
            (id(), driver, id(), block_backend()),
            (
                proptest::option::of(0..=MAX_SCSI_ID),
                proptest::option::of(0..=MAX_LUN),
                any::<bool>(),
                proptest::option::of(text()),
                any::<Option<u32>>(),
            ),
        )
            .prop_map(
                |((id, driver, bus, backend), (scsi_id, lun, share_rw, serial, bootindex))| {
                    ScsiDisk {
                        driver,
                        scsi_id,
                        lun,
                        share_rw,
                        serial,
                        bootindex,
                        ..ScsiDisk::new(id, bus, backend)
                    }
                },
            );
        Cases::new(disk)
            .fault("id", bad_id(), |d, v| d.id = v)
            .fault("bus", bad_id(), |d, v| d.bus = v)
            .fault("scsi_id", MAX_SCSI_ID + 1.., |d, v| d.scsi_id = Some(v))
            .fault("lun", MAX_LUN + 1.., |d, v| d.lun = Some(v))
            .fault("serial", nul_text(), |d, v| d.serial = Some(v))
            .block_backend_faults(|d| &mut d.backend)
            .check();
    }

    #[test]
    fn controller_parts_round_trip_and_faults_name_their_field() {
        let controller = (
            id(),
            proptest::option::of(id()),
            proptest::option::of(id()),
            proptest::option::of(1u32..),
            transport(),
        )
            .prop_map(
                |(id, bus, iothread, num_queues, (virtio, addr))| ScsiController {
                    bus,
                    addr,
                    iothread,
                    num_queues,
                    virtio,
                    ..ScsiController::new(id)
                },
            );
        Cases::new(controller)
            .fault("id", bad_id(), |c, v| c.id = v)
            .fault("bus", bad_id(), |c, v| c.bus = Some(v))
            .fault("iothread", bad_id(), |c, v| c.iothread = Some(v))
            .fault("num_queues", Just(0), |c, v| c.num_queues = Some(v))
            .virtio_faults(|c| (&mut c.virtio, &mut c.addr))
            .check();
    }
}
