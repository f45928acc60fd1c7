//! Virtio transports (PCI, CCW, MMIO): driver naming and per-transport properties.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Error, Result};
use crate::pci::PciAddr;
use crate::props::Props;

/// How a virtio device attaches to the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// virtio-pci (`<base>-pci`): every machine with a PCI bus (`virt`, `q35`, `pc`).
    #[default]
    Pci,
    /// virtio-ccw (`<base>-ccw`): s390x channel I/O.
    Ccw,
    /// virtio-mmio (`<base>-device`): `microvm`.
    Mmio,
}

impl Transport {
    /// The QEMU driver name of the virtio device `base` on this transport:
    /// `virtio-blk` → `virtio-blk-pci`, `virtio-blk-ccw` or `virtio-blk-device`.
    ///
    /// ```
    /// use hvarch_devices::transport::Transport;
    /// assert_eq!(Transport::Pci.driver("virtio-net"), "virtio-net-pci");
    /// assert_eq!(Transport::Mmio.driver("virtio-net"), "virtio-net-device");
    /// ```
    pub fn driver(self, base: &str) -> String {
        let suffix = match self {
            Transport::Pci => "pci",
            Transport::Ccw => "ccw",
            Transport::Mmio => "device",
        };
        format!("{base}-{suffix}")
    }
}

/// Transport settings shared by every virtio device.
///
/// Each setting belongs to one transport; setting it on another is an error (govmm silently
/// ignored such settings, and emitted an empty `romfile=` everywhere).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VirtioOpts {
    /// The transport (default PCI).
    pub transport: Transport,
    /// PCI only: `disable-modern=on`, a legacy-only device (Kata sets it when nested).
    pub disable_modern: bool,
    /// PCI only: the option ROM file; `Some("")` asks for an explicit empty `romfile=`
    /// (no ROM, needed for virtio-net without iPXE installed).
    pub romfile: Option<String>,
    /// CCW only, required there: the device number, `fe.<css>.<devno>` (e.g. `fe.0.0001`).
    pub devno: Option<String>,
    /// CCW only: `iommu_platform=on`.
    pub iommu_platform: bool,
}

impl VirtioOpts {
    /// Default settings on `transport`.
    pub fn on(transport: Transport) -> Self {
        VirtioOpts {
            transport,
            ..VirtioOpts::default()
        }
    }

    /// The driver name of virtio device `base` on this transport.
    pub fn driver(&self, base: &str) -> String {
        self.transport.driver(base)
    }

    /// Checks that each setting belongs to the chosen transport.
    pub fn validate(&self, what: &'static str) -> Result<()> {
        let pci_only = |field, set: bool| {
            if set && self.transport != Transport::Pci {
                Err(invalid(
                    what,
                    field,
                    "set",
                    "applies to the pci transport only",
                ))
            } else {
                Ok(())
            }
        };
        pci_only("disable_modern", self.disable_modern)?;
        pci_only("romfile", self.romfile.is_some())?;
        let ccw_only = |field, set: bool| {
            if set && self.transport != Transport::Ccw {
                Err(invalid(
                    what,
                    field,
                    "set",
                    "applies to the ccw transport only",
                ))
            } else {
                Ok(())
            }
        };
        ccw_only("devno", self.devno.is_some())?;
        ccw_only("iommu_platform", self.iommu_platform)?;
        if self.transport == Transport::Ccw {
            let devno = self.devno.as_deref().ok_or(Error::MissingField {
                what,
                field: "devno",
            })?;
            check_devno(what, devno)?;
        }
        Ok(())
    }

    /// Checks a device's `addr` (a PCI address needs the PCI transport), then
    /// [`validate`](Self::validate)s these settings.
    pub(crate) fn validate_with_addr(
        &self,
        what: &'static str,
        addr: Option<PciAddr>,
    ) -> Result<()> {
        if addr.is_some() && self.transport != Transport::Pci {
            return Err(invalid(
                what,
                "addr",
                "set",
                "applies to the pci transport only",
            ));
        }
        self.validate(what)
    }

    /// The transport properties, in govmm's order: `disable-modern`, `romfile`,
    /// `iommu_platform`, `devno`.
    pub fn props(&self) -> Props {
        Props::new()
            .flag("disable-modern", self.disable_modern)
            .opt("romfile", self.romfile.as_deref())
            .flag("iommu_platform", self.iommu_platform)
            .opt("devno", self.devno.as_deref())
    }
}

/// Checks a CCW device number: `<cssid>.<ssid>.<devno>` in hex with a 4-digit device number.
fn check_devno(what: &'static str, devno: &str) -> Result<()> {
    let fields: Vec<&str> = devno.split('.').collect();
    let ok = fields.len() == 3
        && fields
            .iter()
            .all(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_hexdigit()))
        && fields[2].len() == 4
        && fields[0].len() <= 2
        && fields[1].len() == 1;
    if ok {
        Ok(())
    } else {
        Err(invalid(
            what,
            "devno",
            devno,
            "expected <cssid>.<ssid>.<devno> in hex, e.g. fe.0.0001",
        ))
    }
}

/// The UTF-8 text of a path field (QEMU options and QMP are text).
pub(crate) fn path_str<'a>(
    what: &'static str,
    field: &'static str,
    path: &'a Path,
) -> Result<&'a str> {
    let text = path.to_str().ok_or_else(|| Error::NonUtf8Path {
        what,
        field,
        path: path.to_string_lossy().into_owned(),
    })?;
    if text.is_empty() {
        return Err(Error::MissingField { what, field });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::syntax::render_options;

    #[test]
    fn settings_belong_to_their_transport() {
        let mut opts = VirtioOpts::on(Transport::Ccw);
        assert_eq!(
            opts.validate("virtio-blk").unwrap_err(),
            Error::MissingField {
                what: "virtio-blk",
                field: "devno"
            }
        );
        opts.devno = Some("fe.0.0001".into());
        opts.validate("virtio-blk").unwrap();
        opts.romfile = Some(String::new());
        assert!(opts.validate("virtio-blk").is_err());

        let pci = VirtioOpts {
            iommu_platform: true,
            ..VirtioOpts::default()
        };
        assert!(pci.validate("virtio-blk").is_err());
        assert!(VirtioOpts {
            devno: Some("fe.0.1".into()),
            ..VirtioOpts::on(Transport::Ccw)
        }
        .validate("x")
        .is_err());
    }

    #[test]
    fn props_in_govmm_order() {
        let opts = VirtioOpts {
            disable_modern: true,
            romfile: Some("efi-virtio.rom".into()),
            ..VirtioOpts::default()
        };
        assert_eq!(
            render_options("t", None, &opts.props(), &mut NoFds).unwrap(),
            "disable-modern=on,romfile=efi-virtio.rom"
        );
        let ccw = VirtioOpts {
            iommu_platform: true,
            devno: Some("fe.0.0001".into()),
            ..VirtioOpts::on(Transport::Ccw)
        };
        assert_eq!(
            render_options("t", None, &ccw.props(), &mut NoFds).unwrap(),
            "iommu_platform=on,devno=fe.0.0001"
        );
    }
}
