//! IOMMUs: Intel VT-d emulation ([`IntelIommu`], x86 `q35`) and the paravirtual
//! [`VirtioIommu`] (any machine with PCI, e.g. arm64 `virt`). Both are cold plug only: QEMU
//! refuses to hot-add an IOMMU.

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Error, Result};
use crate::id::check_opt_id;
use crate::part::Part;
use crate::pci::PciAddr;
use crate::props::Props;
use crate::transport::{Transport, VirtioOpts};

/// An emulated Intel IOMMU, `-device intel-iommu,intremap=on|off,device-iotlb=on|off,
/// caching-mode=on|off`.
///
/// Needs the `q35` machine. Interrupt remapping under KVM also needs the machine option
/// `kernel-irqchip=split` (QEMU refuses `intremap=on` with a full in-kernel irqchip): that is
/// the machine configuration's business, not this device's. Caching mode is what lets VFIO
/// devices sit behind the IOMMU.
///
/// ```
/// use hvarch_devices::iommu::IntelIommu;
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let iommu = IntelIommu::new(); // Kata's settings: everything on
/// assert_eq!(
///     iommu.parts().unwrap()[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-device", "intel-iommu,intremap=on,device-iotlb=on,caching-mode=on"],
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntelIommu {
    /// The device id (optional).
    #[serde(default)]
    pub id: Option<String>,
    /// Interrupt remapping (`intremap=`).
    pub intremap: bool,
    /// Device IOTLB, for ATS-capable devices (`device-iotlb=`).
    pub device_iotlb: bool,
    /// Caching mode, needed for VFIO devices behind the IOMMU (`caching-mode=`).
    pub caching_mode: bool,
    /// The guest address width in bits (`aw-bits=`): 39 or 48. QEMU's default (48) when unset.
    #[serde(default)]
    pub aw_bits: Option<u8>,
}

impl IntelIommu {
    /// Kata's IOMMU: interrupt remapping, device IOTLB and caching mode all on.
    pub fn new() -> Self {
        IntelIommu {
            id: None,
            intremap: true,
            device_iotlb: true,
            caching_mode: true,
            aw_bits: None,
        }
    }
}

impl Default for IntelIommu {
    /// Same as [`IntelIommu::new`].
    fn default() -> Self {
        IntelIommu::new()
    }
}

impl QemuDevice for IntelIommu {
    fn kind(&self) -> &'static str {
        "intel-iommu"
    }

    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_opt_id(what, "id", self.id.as_deref())?;
        match self.aw_bits {
            None | Some(39) | Some(48) => Ok(()),
            Some(bits) => Err(invalid(what, "aw_bits", bits, "QEMU supports 39 and 48")),
        }
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        // `intremap` is an OnOffAuto property: a string in JSON, not a boolean.
        let intremap = if self.intremap { "on" } else { "off" };
        emit(Part::device(
            "intel-iommu",
            Props::new()
                .opt("id", self.id.as_deref())
                .with("intremap", intremap)
                .with("device-iotlb", self.device_iotlb)
                .with("caching-mode", self.caching_mode)
                .opt("aw-bits", self.aw_bits),
        ))
    }
}

/// A virtio IOMMU, `-device virtio-iommu-pci` (or `virtio-iommu-device` on virtio-mmio).
///
/// On PCI the device manages its own PCI bus. On virtio-mmio QEMU needs to be told which PCI
/// bus it manages (`primary_bus`, e.g. `pcie.0`); without one it refuses to start. There is no
/// CCW variant.
///
/// ```
/// use hvarch_devices::iommu::VirtioIommu;
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let mut iommu = VirtioIommu::new();
/// iommu.id = Some("viommu0".into());
/// assert_eq!(
///     iommu.parts().unwrap()[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-device", "virtio-iommu-pci,id=viommu0"],
/// );
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioIommu {
    /// The device id (optional).
    #[serde(default)]
    pub id: Option<String>,
    /// The bus (a bridge or root port id).
    #[serde(default)]
    pub bus: Option<String>,
    /// PCI only: the address on the bus.
    #[serde(default)]
    pub addr: Option<PciAddr>,
    /// Whether DMA from devices passes untranslated until the guest driver configures the
    /// IOMMU (`boot-bypass=`; QEMU's default is on).
    #[serde(default)]
    pub boot_bypass: Option<bool>,
    /// virtio-mmio only, required there: the PCI bus the IOMMU manages (`primary-bus=`).
    #[serde(default)]
    pub primary_bus: Option<String>,
    /// Transport settings (PCI or MMIO).
    #[serde(default)]
    pub virtio: VirtioOpts,
}

impl VirtioIommu {
    /// A `virtio-iommu-pci` with QEMU's defaults.
    pub fn new() -> Self {
        VirtioIommu::default()
    }
}

impl QemuDevice for VirtioIommu {
    fn kind(&self) -> &'static str {
        "virtio-iommu"
    }

    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_opt_id(what, "id", self.id.as_deref())?;
        check_opt_id(what, "bus", self.bus.as_deref())?;
        check_opt_id(what, "primary_bus", self.primary_bus.as_deref())?;
        match self.virtio.transport {
            Transport::Pci => {
                if self.primary_bus.is_some() {
                    return Err(invalid(
                        what,
                        "primary_bus",
                        "set",
                        "virtio-iommu-pci manages its own PCI bus; primary_bus is for mmio",
                    ));
                }
            }
            Transport::Mmio => {
                if self.primary_bus.is_none() {
                    return Err(Error::MissingField {
                        what,
                        field: "primary_bus",
                    });
                }
                if self.addr.is_some() {
                    return Err(invalid(
                        what,
                        "addr",
                        "set",
                        "applies to the pci transport only",
                    ));
                }
            }
            Transport::Ccw => {
                return Err(invalid(
                    what,
                    "virtio.transport",
                    "ccw",
                    "QEMU has no virtio-iommu-ccw",
                ))
            }
        }
        self.virtio.validate(what)
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        emit(Part::device(
            self.virtio.driver("virtio-iommu"),
            Props::new()
                .opt("id", self.id.as_deref())
                .opt("bus", self.bus.as_deref())
                .opt("addr", self.addr)
                .opt("primary-bus", self.primary_bus.as_deref())
                .opt("boot-bypass", self.boot_bypass)
                .extend(self.virtio.props()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{args, bad_id, devno, id, pci_addr, text, transport, Cases};
    use proptest::prelude::*;
    use serde_json::json;

    /// govmm `IommuDev{Intremap, DeviceIotlb, CachingMode}` (kata-go.md §2.3): identical.
    #[test]
    fn govmm_reference_case() {
        assert_eq!(
            args(&IntelIommu::new()),
            [
                "-device",
                "intel-iommu,intremap=on,device-iotlb=on,caching-mode=on"
            ]
        );
        let off = IntelIommu {
            intremap: false,
            device_iotlb: false,
            caching_mode: false,
            ..IntelIommu::new()
        };
        assert_eq!(
            args(&off),
            [
                "-device",
                "intel-iommu,intremap=off,device-iotlb=off,caching-mode=off"
            ]
        );
    }

    #[test]
    fn intel_json_uses_a_string_for_intremap() {
        let iommu = IntelIommu {
            id: Some("iommu0".into()),
            aw_bits: Some(39),
            ..IntelIommu::new()
        };
        let part = &iommu.parts().unwrap()[0];
        assert_eq!(
            part.render(Syntax::Json, &mut NoFds).unwrap(),
            r#"{"driver":"intel-iommu","id":"iommu0","intremap":"on","device-iotlb":true,"caching-mode":true,"aw-bits":39}"#
        );
        assert_eq!(
            part.render(Syntax::Options, &mut NoFds).unwrap(),
            "intel-iommu,id=iommu0,intremap=on,device-iotlb=on,caching-mode=on,aw-bits=39"
        );
    }

    #[test]
    fn virtio_iommu_transports() {
        let mut iommu = VirtioIommu::new();
        iommu.bus = Some("pcie.0".into());
        iommu.addr = Some(PciAddr::slot_only(4).unwrap());
        iommu.boot_bypass = Some(false);
        iommu.virtio.disable_modern = true;
        assert_eq!(
            args(&iommu),
            [
                "-device",
                "virtio-iommu-pci,bus=pcie.0,addr=04,boot-bypass=off,disable-modern=on"
            ]
        );
        assert_eq!(
            iommu.parts().unwrap()[0]
                .qmp_add(&mut NoFds)
                .unwrap()
                .arguments,
            json!({"driver": "virtio-iommu-pci", "bus": "pcie.0", "addr": "04",
                   "boot-bypass": false, "disable-modern": true})
        );
        let mmio = VirtioIommu {
            primary_bus: Some("pcie.0".into()),
            virtio: VirtioOpts::on(Transport::Mmio),
            ..VirtioIommu::new()
        };
        assert_eq!(
            args(&mmio),
            ["-device", "virtio-iommu-device,primary-bus=pcie.0"]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = IntelIommu {
            aw_bits: Some(52),
            ..IntelIommu::new()
        }
        .parts()
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "intel-iommu: invalid `aw_bits` \"52\": QEMU supports 39 and 48"
        );
        let mmio = VirtioIommu {
            virtio: VirtioOpts::on(Transport::Mmio),
            ..VirtioIommu::new()
        };
        assert_eq!(
            mmio.validate().unwrap_err().to_string(),
            "virtio-iommu: `primary_bus` is required"
        );
        let ccw = VirtioIommu {
            virtio: VirtioOpts {
                devno: Some("fe.0.0001".into()),
                ..VirtioOpts::on(Transport::Ccw)
            },
            ..VirtioIommu::new()
        };
        assert!(ccw
            .validate()
            .unwrap_err()
            .to_string()
            .contains("virtio.transport"));
        let pci = VirtioIommu {
            primary_bus: Some("pcie.0".into()),
            ..VirtioIommu::new()
        };
        assert!(pci
            .validate()
            .unwrap_err()
            .to_string()
            .contains("primary_bus"));
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = "intremap = true\ndevice_iotlb = false\ncaching_mode = true\naw_bits = 48";
        let intel: IntelIommu = toml::from_str(text).unwrap();
        assert_eq!(intel.aw_bits, Some(48));
        let again: IntelIommu = toml::from_str(&toml::to_string(&intel).unwrap()).unwrap();
        assert_eq!(again, intel);
        assert!(toml::from_str::<IntelIommu>(&format!("{text}\neim = true")).is_err());

        let text = "id = \"vi0\"\nprimary_bus = \"pcie.0\"\n[virtio]\ntransport = \"mmio\"";
        let virtio: VirtioIommu = toml::from_str(text).unwrap();
        assert_eq!(virtio.virtio.transport, Transport::Mmio);
        let again: VirtioIommu = toml::from_str(&toml::to_string(&virtio).unwrap()).unwrap();
        assert_eq!(again, virtio);
        assert!(toml::from_str::<VirtioIommu>("granule = \"4k\"").is_err());
    }

    #[test]
    fn intel_parts_round_trip_and_faults_name_their_field() {
        let iommu = (
            proptest::option::of(id()),
            any::<(bool, bool, bool)>(),
            proptest::option::of(prop_oneof![Just(39u8), Just(48u8)]),
        )
            .prop_map(|(id, flags, aw_bits)| IntelIommu {
                id,
                intremap: flags.0,
                device_iotlb: flags.1,
                caching_mode: flags.2,
                aw_bits,
            });
        let bad_bits = any::<u8>().prop_filter("supported", |b| ![39, 48].contains(b));
        Cases::new(iommu)
            .fault("id", bad_id(), |d, v| d.id = Some(v))
            .fault("aw_bits", bad_bits, |d, v| d.aw_bits = Some(v))
            .check();
    }

    /// `iommu` on the MMIO transport, on `primary_bus`.
    fn on_mmio(iommu: &mut VirtioIommu, primary_bus: Option<String>) {
        iommu.virtio = VirtioOpts::on(Transport::Mmio);
        iommu.addr = None;
        iommu.primary_bus = primary_bus;
    }

    #[test]
    fn virtio_parts_round_trip_and_faults_name_their_field() {
        let pci = (transport(), proptest::option::of(pci_addr())).prop_filter_map(
            "PCI only",
            |((virtio, _), addr)| {
                (virtio.transport == Transport::Pci).then_some((virtio, addr, None))
            },
        );
        let mmio = id().prop_map(|bus| (VirtioOpts::on(Transport::Mmio), None, Some(bus)));
        let iommu = (
            proptest::option::of(id()),
            proptest::option::of(id()),
            any::<Option<bool>>(),
            prop_oneof![pci, mmio],
        )
            .prop_map(
                |(id, bus, boot_bypass, (virtio, addr, primary_bus))| VirtioIommu {
                    id,
                    bus,
                    addr,
                    boot_bypass,
                    primary_bus,
                    virtio,
                },
            );
        Cases::new(iommu)
            .fault("id", bad_id(), |d, v| d.id = Some(v))
            .fault("bus", bad_id(), |d, v| d.bus = Some(v))
            .fault("primary_bus", bad_id(), |d, v| on_mmio(d, Some(v)))
            .fault("primary_bus", Just(None), on_mmio)
            .fault("primary_bus", id(), |d, v| {
                d.virtio = VirtioOpts::default();
                d.primary_bus = Some(v);
            })
            .fault("addr", pci_addr(), |d, v| {
                on_mmio(d, Some("bus0".into()));
                d.addr = Some(v);
            })
            .fault("romfile", text(), |d, v| {
                on_mmio(d, Some("bus0".into()));
                d.virtio.romfile = Some(v);
            })
            .fault("virtio.transport", devno(), |d, v| {
                d.virtio = VirtioOpts {
                    devno: Some(v),
                    ..VirtioOpts::on(Transport::Ccw)
                };
            })
            .check();
    }
}
