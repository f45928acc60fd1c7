//! VFIO device assignment ([`VfioDevice`]): a host PCI device (`vfio-pci`), a mediated device
//! (`vfio-pci` on a vGPU, `vfio-ccw` on an s390x subchannel, `vfio-ap` on crypto adapters).
//!
//! The host device must already be bound to `vfio-pci` (or be a created mdev) and the QEMU
//! process must be able to open its `/dev/vfio/<group>`; none of that is checked here.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Result};
use crate::id::{check_id, check_opt_id};
use crate::part::Part;
use crate::pci::PciAddr;
use crate::props::Props;
use crate::transport::{path_str, Transport, VirtioOpts};

/// Where the assigned device is on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VfioSource {
    /// A host PCI device by address, `[domain:]bus:slot.function` in hex
    /// (`0000:02:10.0` or `02:10.0`); `host=`. vfio-pci only.
    Host(String),
    /// A device by sysfs path, e.g. a mediated device
    /// `/sys/bus/mdev/devices/<uuid>`; `sysfsdev=`.
    Sysfsdev(PathBuf),
}

/// The VFIO driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VfioKind {
    /// `vfio-pci`: a PCI device or a PCI mediated device (vGPU).
    #[default]
    VfioPci,
    /// `vfio-ccw`: an s390x channel subchannel (mediated; `sysfsdev` only).
    VfioCcw,
    /// `vfio-ap`: s390x crypto adapters (mediated; `sysfsdev` only).
    VfioAp,
}

impl VfioKind {
    /// The QEMU driver name.
    pub fn as_str(self) -> &'static str {
        match self {
            VfioKind::VfioPci => "vfio-pci",
            VfioKind::VfioCcw => "vfio-ccw",
            VfioKind::VfioAp => "vfio-ap",
        }
    }
}

/// An assigned host device.
///
/// ```
/// use hvarch_devices::vfio::{VfioDevice, VfioSource};
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let mut gpu = VfioDevice::new("vfio0", VfioSource::Host("0000:02:00.0".into()));
/// gpu.bus = Some("rp0".into());
/// let parts = gpu.parts().unwrap();
/// assert_eq!(
///     parts[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-device", "vfio-pci,id=vfio0,host=0000:02:00.0,bus=rp0"],
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfioDevice {
    /// The device id.
    pub id: String,
    /// The driver (default `vfio-pci`).
    #[serde(default)]
    pub kind: VfioKind,
    /// The host device.
    pub source: VfioSource,
    /// vfio-pci only: the vendor id the guest sees (`x-pci-vendor-id=`, QEMU's debug override).
    #[serde(default)]
    pub vendor_id: Option<u16>,
    /// vfio-pci only: the device id the guest sees (`x-pci-device-id=`).
    #[serde(default)]
    pub device_id: Option<u16>,
    /// The bus (a bridge or root port id).
    #[serde(default)]
    pub bus: Option<String>,
    /// vfio-pci only: the address on the bus.
    #[serde(default)]
    pub addr: Option<PciAddr>,
    /// vfio-pci only: the option ROM file; `Some("")` asks for `romfile=` (no ROM).
    #[serde(default)]
    pub romfile: Option<String>,
    /// vfio-ccw only: the guest device number, `fe.<ssid>.<devno>` (QEMU picks one if unset).
    #[serde(default)]
    pub devno: Option<String>,
}

impl VfioDevice {
    /// A `vfio-pci` device `id` assigning `source`.
    pub fn new(id: impl Into<String>, source: VfioSource) -> Self {
        VfioDevice {
            id: id.into(),
            kind: VfioKind::VfioPci,
            source,
            vendor_id: None,
            device_id: None,
            bus: None,
            addr: None,
            romfile: None,
            devno: None,
        }
    }
}

/// Checks a host PCI address: `[domain:]bus:slot.function`, hex, domain ≤ ffff, bus ≤ ff,
/// slot ≤ 1f, function ≤ 7.
fn check_bdf(what: &'static str, bdf: &str) -> Result<()> {
    let bad = || {
        invalid(
            what,
            "source",
            bdf,
            "expected a host PCI address [domain:]bus:slot.function in hex, e.g. 0000:02:10.0",
        )
    };
    let hex = |text: &str, max_digits: usize, max: u32| {
        if text.is_empty()
            || text.len() > max_digits
            || !text.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(bad());
        }
        match u32::from_str_radix(text, 16) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(bad()),
        }
    };
    let (bus_slot, function) = bdf.rsplit_once('.').ok_or_else(bad)?;
    let fields: Vec<&str> = bus_slot.split(':').collect();
    let (domain, bus, slot) = match fields.as_slice() {
        [bus, slot] => (None, *bus, *slot),
        [domain, bus, slot] => (Some(*domain), *bus, *slot),
        _ => return Err(bad()),
    };
    if let Some(domain) = domain {
        hex(domain, 4, 0xffff)?;
    }
    hex(bus, 2, 0xff)?;
    hex(slot, 2, 0x1f)?;
    hex(function, 1, 7)?;
    Ok(())
}

impl QemuDevice for VfioDevice {
    fn kind(&self) -> &'static str {
        self.kind.as_str()
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        match &self.source {
            VfioSource::Host(bdf) => {
                if self.kind != VfioKind::VfioPci {
                    return Err(invalid(
                        what,
                        "source",
                        bdf,
                        "only vfio-pci takes a host PCI address; give the mediated \
                         device's sysfs path (sysfsdev) instead",
                    ));
                }
                check_bdf(what, bdf)?;
            }
            VfioSource::Sysfsdev(path) => {
                path_str(what, "source", path)?;
            }
        }
        check_opt_id(what, "bus", self.bus.as_deref())?;
        let pci_only = |field, set: bool| {
            if set && self.kind != VfioKind::VfioPci {
                Err(invalid(what, field, "set", "applies to vfio-pci only"))
            } else {
                Ok(())
            }
        };
        pci_only("vendor_id", self.vendor_id.is_some())?;
        pci_only("device_id", self.device_id.is_some())?;
        pci_only("addr", self.addr.is_some())?;
        pci_only("romfile", self.romfile.is_some())?;
        if let Some(devno) = &self.devno {
            if self.kind != VfioKind::VfioCcw {
                return Err(invalid(what, "devno", devno, "applies to vfio-ccw only"));
            }
            // The same device-number rule as virtio-ccw devices.
            VirtioOpts {
                devno: Some(devno.clone()),
                ..VirtioOpts::on(Transport::Ccw)
            }
            .validate(what)?;
        }
        Ok(())
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        let mut props = Props::new().with("id", self.id.as_str());
        match &self.source {
            VfioSource::Host(bdf) => props.push("host", bdf.as_str()),
            VfioSource::Sysfsdev(path) => {
                props.push("sysfsdev", path_str(self.kind(), "source", path)?)
            }
        };
        let props = props
            .opt("x-pci-vendor-id", self.vendor_id)
            .opt("x-pci-device-id", self.device_id)
            .opt("bus", self.bus.as_deref())
            .opt("addr", self.addr)
            .opt("romfile", self.romfile.as_deref())
            .opt("devno", self.devno.as_deref());
        emit(Part::device(self.kind.as_str(), props))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{
        args, bad_devno, bad_id, bad_path, devno, id, nul_text, path, pci_addr, text, Cases,
    };
    use proptest::prelude::*;
    use serde_json::json;

    /// govmm: `-device vfio-pci,host=02:10.0,x-pci-vendor-id=0x1234,x-pci-device-id=0x5678,
    /// romfile=efi-virtio.rom`. Differences: an `id` (needed to unplug); the ids are written
    /// in decimal, because QEMU's properties are integers (`uint32`) and the same value must be
    /// a JSON number in `-device {…}` and `device_add` (QEMU parses `0x1234` only in option
    /// syntax).
    #[test]
    fn govmm_reference_vendor_device_ids() {
        let mut dev = VfioDevice::new("vfio0", VfioSource::Host("02:10.0".into()));
        dev.vendor_id = Some(0x1234);
        dev.device_id = Some(0x5678);
        dev.romfile = Some("efi-virtio.rom".into());
        assert_eq!(
            args(&dev)[1],
            "vfio-pci,id=vfio0,host=02:10.0,x-pci-vendor-id=4660,x-pci-device-id=22136,\
             romfile=efi-virtio.rom"
        );
        assert_eq!(
            dev.parts().unwrap()[0]
                .render(Syntax::Json, &mut NoFds)
                .unwrap(),
            r#"{"driver":"vfio-pci","id":"vfio0","host":"02:10.0","x-pci-vendor-id":4660,"x-pci-device-id":22136,"romfile":"efi-virtio.rom"}"#
        );
    }

    /// govmm: `-device vfio-pci,host=02:00.0,romfile=,bus=rp0`. Differences: an `id`; no empty
    /// `romfile=` unless asked for.
    #[test]
    fn govmm_reference_on_bus() {
        let mut dev = VfioDevice::new("vfio1", VfioSource::Host("02:00.0".into()));
        dev.bus = Some("rp0".into());
        assert_eq!(args(&dev)[1], "vfio-pci,id=vfio1,host=02:00.0,bus=rp0");
        dev.romfile = Some(String::new());
        assert_eq!(
            args(&dev)[1],
            "vfio-pci,id=vfio1,host=02:00.0,bus=rp0,romfile="
        );
    }

    /// govmm `ExecutePCIVFIODeviceAdd` / `ExecutePCIVFIOMediatedDeviceAdd` /
    /// `ExecuteAPVFIOMediatedDeviceAdd` (romfile only when set; AP gets an id too).
    #[test]
    fn qmp_matches_govmm() {
        let mut pci = VfioDevice::new("vfio0", VfioSource::Host("0000:02:10.0".into()));
        pci.bus = Some("rp1".into());
        pci.addr = Some(PciAddr::slot_only(0).unwrap());
        let add = pci.parts().unwrap()[0].qmp_add(&mut NoFds).unwrap();
        assert_eq!(add.command, "device_add");
        assert_eq!(
            add.arguments,
            json!({"id": "vfio0", "driver": "vfio-pci", "host": "0000:02:10.0",
                   "bus": "rp1", "addr": "00"})
        );

        let mut mdev = VfioDevice::new(
            "vgpu0",
            VfioSource::Sysfsdev(
                "/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".into(),
            ),
        );
        mdev.romfile = Some(String::new());
        assert_eq!(
            mdev.parts().unwrap()[0]
                .qmp_add(&mut NoFds)
                .unwrap()
                .arguments,
            json!({"id": "vgpu0", "driver": "vfio-pci",
                   "sysfsdev": "/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
                   "romfile": ""})
        );

        let mut ap = VfioDevice::new(
            "ap0",
            VfioSource::Sysfsdev("/sys/devices/vfio_ap/matrix/m0".into()),
        );
        ap.kind = VfioKind::VfioAp;
        let add = ap.parts().unwrap()[0].qmp_add(&mut NoFds).unwrap();
        assert_eq!(
            add.arguments,
            json!({"driver": "vfio-ap", "id": "ap0", "sysfsdev": "/sys/devices/vfio_ap/matrix/m0"})
        );
        assert_eq!(
            ap.parts().unwrap()[0].qmp_del().unwrap().arguments,
            json!({"id": "ap0"})
        );
    }

    #[test]
    fn ccw_takes_a_sysfsdev_and_devno() {
        let mut ccw = VfioDevice::new(
            "ccw0",
            VfioSource::Sysfsdev("/sys/bus/mdev/devices/u".into()),
        );
        ccw.kind = VfioKind::VfioCcw;
        ccw.devno = Some("fe.0.1234".into());
        assert_eq!(
            args(&ccw)[1],
            "vfio-ccw,id=ccw0,sysfsdev=/sys/bus/mdev/devices/u,devno=fe.0.1234"
        );
        ccw.source = VfioSource::Host("02:10.0".into());
        assert!(ccw.validate().unwrap_err().to_string().contains("`source`"));
    }

    #[test]
    fn errors_name_the_field() {
        for bad in [
            "",
            "02:10",
            "02:20.0",
            "02:10.8",
            "1:2:3:4.0",
            "00000:02:10.0",
            "g2:10.0",
            "02:10.0,x=1",
        ] {
            let dev = VfioDevice::new("v", VfioSource::Host(bad.into()));
            let err = dev.validate().unwrap_err().to_string();
            assert!(err.contains("`source`"), "{bad}: {err}");
        }
        for good in ["02:10.0", "0000:02:10.0", "ffff:ff:1f.7", "0:0:0.0"] {
            VfioDevice::new("v", VfioSource::Host(good.into()))
                .validate()
                .unwrap();
        }
        let mut ap = VfioDevice::new("ap", VfioSource::Sysfsdev("/sys/x".into()));
        ap.kind = VfioKind::VfioAp;
        ap.vendor_id = Some(1);
        assert!(ap.validate().unwrap_err().to_string().contains("vendor_id"));
        ap.vendor_id = None;
        ap.devno = Some("fe.0.0001".into());
        assert!(ap.validate().unwrap_err().to_string().contains("devno"));
        ap.devno = None;
        ap.source = VfioSource::Sysfsdev(PathBuf::new());
        assert_eq!(
            ap.validate().unwrap_err().to_string(),
            "vfio-ap: `source` is required"
        );
        let mut ccw = VfioDevice::new("c", VfioSource::Sysfsdev("/sys/x".into()));
        ccw.kind = VfioKind::VfioCcw;
        ccw.devno = Some("1234".into());
        assert!(ccw.validate().unwrap_err().to_string().contains("devno"));
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = r#"
            id = "vfio0"
            source = { host = "0000:02:10.0" }
            vendor_id = 4660
            bus = "rp0"
        "#;
        let dev: VfioDevice = toml::from_str(text).unwrap();
        assert_eq!(dev.source, VfioSource::Host("0000:02:10.0".into()));
        let again: VfioDevice = toml::from_str(&toml::to_string(&dev).unwrap()).unwrap();
        assert_eq!(again, dev);
        let text = r#"
            id = "ap0"
            kind = "vfio-ap"
            source = { sysfsdev = "/sys/devices/vfio_ap/matrix/m0" }
        "#;
        let ap: VfioDevice = toml::from_str(text).unwrap();
        assert_eq!(ap.kind, VfioKind::VfioAp);
        assert!(toml::from_str::<VfioDevice>(&format!("{text}\nhost = \"02:00.0\"")).is_err());
        let device: crate::Device =
            serde_json::from_str(r#"{"type": "vfio", "id": "v0", "source": {"host": "02:00.0"}}"#)
                .unwrap();
        assert_eq!(device.kind(), "vfio-pci");
    }

    fn bdf() -> impl Strategy<Value = String> {
        "([0-9a-fA-F]{1,4}:)?[0-9a-f]{1,2}:[01]?[0-9a-f]\\.[0-7]"
    }

    fn bad_bdf() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[0-9a-f]{2}:[2-9a-f][0-9a-f]\\.[0-7]",
            "[0-9a-f]{2}:[01][0-9a-f]\\.[89a-f]",
            "[0-9a-f]{5}:[0-9a-f]{2}:[01][0-9a-f]\\.[0-7]",
            "[0-9a-f]{2}[01][0-9a-f]\\.[0-7]",
            "[g-z,= ]{1,8}",
        ]
    }

    /// Valid assignments: vfio-pci of a host address or a sysfs device with its PCI-only
    /// settings, vfio-ccw (with a device number or not) or vfio-ap of a sysfs device.
    fn device() -> impl Strategy<Value = VfioDevice> {
        let source = prop_oneof![
            bdf().prop_map(VfioSource::Host),
            path().prop_map(VfioSource::Sysfsdev)
        ];
        let pci = (
            source,
            any::<(Option<u16>, Option<u16>)>(),
            proptest::option::of(pci_addr()),
            proptest::option::of(text()),
        )
            .prop_map(
                |(source, (vendor_id, device_id), addr, romfile)| VfioDevice {
                    vendor_id,
                    device_id,
                    addr,
                    romfile,
                    ..VfioDevice::new("", source)
                },
            );
        let ccw = (path(), proptest::option::of(devno())).prop_map(|(path, devno)| VfioDevice {
            kind: VfioKind::VfioCcw,
            devno,
            ..VfioDevice::new("", VfioSource::Sysfsdev(path))
        });
        let ap = path().prop_map(|path| VfioDevice {
            kind: VfioKind::VfioAp,
            ..VfioDevice::new("", VfioSource::Sysfsdev(path))
        });
        (
            id(),
            proptest::option::of(id()),
            prop_oneof![2 => pci, 1 => ccw, 1 => ap],
        )
            .prop_map(|(id, bus, device)| VfioDevice { id, bus, ..device })
    }

    /// `dev` as a vfio-ccw or vfio-ap device of a sysfs path, without PCI-only settings.
    fn mediated(dev: &mut VfioDevice, ccw: bool) {
        *dev = VfioDevice {
            kind: if ccw {
                VfioKind::VfioCcw
            } else {
                VfioKind::VfioAp
            },
            bus: dev.bus.clone(),
            ..VfioDevice::new(dev.id.clone(), VfioSource::Sysfsdev("/sys/m".into()))
        };
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        Cases::new(device())
            .fault("id", bad_id(), |d, v| d.id = v)
            .fault("bus", bad_id(), |d, v| d.bus = Some(v))
            .fault("source", bad_bdf(), |d, v| {
                *d = VfioDevice::new(d.id.clone(), VfioSource::Host(v))
            })
            .fault("source", (bdf(), any::<bool>()), |d, (bdf, ccw)| {
                mediated(d, ccw);
                d.source = VfioSource::Host(bdf);
            })
            .fault("source", bad_path(), |d, v| {
                d.source = VfioSource::Sysfsdev(v)
            })
            .fault("sysfsdev", nul_text(), |d, v| {
                d.source = VfioSource::Sysfsdev(v.into())
            })
            .fault("vendor_id", (any::<u16>(), any::<bool>()), |d, (v, ccw)| {
                mediated(d, ccw);
                d.vendor_id = Some(v);
            })
            .fault("device_id", (any::<u16>(), any::<bool>()), |d, (v, ccw)| {
                mediated(d, ccw);
                d.device_id = Some(v);
            })
            .fault("addr", (pci_addr(), any::<bool>()), |d, (v, ccw)| {
                mediated(d, ccw);
                d.addr = Some(v);
            })
            .fault("romfile", (text(), any::<bool>()), |d, (v, ccw)| {
                mediated(d, ccw);
                d.romfile = Some(v);
            })
            .fault("devno", bad_devno(), |d, v| {
                mediated(d, true);
                d.devno = Some(v);
            })
            .fault("devno", devno(), |d, v| {
                mediated(d, false);
                d.devno = Some(v);
            })
            .check();
    }
}
