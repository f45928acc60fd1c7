//! Virtio transports (PCI, CCW, MMIO): driver naming and per-transport properties.

use std::borrow::Cow;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Error, Result};
use crate::pci::PciAddr;
use crate::props::{Key, Value};

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
    /// assert_eq!(Transport::Ccw.driver("virtio-foo"), "virtio-foo-ccw");
    /// ```
    ///
    /// The name is a literal (no allocation) for the devices of this crate.
    pub fn driver(self, base: &str) -> Cow<'static, str> {
        match known_driver(self, base) {
            Some(name) => Cow::Borrowed(name),
            None => {
                let suffix = match self {
                    Transport::Pci => "pci",
                    Transport::Ccw => "ccw",
                    Transport::Mmio => "device",
                };
                Cow::Owned(format!("{base}-{suffix}"))
            }
        }
    }
}

/// The driver names of the virtio devices of this crate on each transport, as literals.
macro_rules! known_drivers {
    ($($base:literal),* $(,)?) => {
        fn known_driver(transport: Transport, base: &str) -> Option<&'static str> {
            Some(match (transport, base) {
                $(
                    (Transport::Pci, $base) => concat!($base, "-pci"),
                    (Transport::Ccw, $base) => concat!($base, "-ccw"),
                    (Transport::Mmio, $base) => concat!($base, "-device"),
                )*
                _ => return None,
            })
        }

        /// The bases [`known_driver`] names.
        #[cfg(test)]
        const KNOWN_BASES: &[&str] = &[$($base),*];
    };
}

known_drivers!(
    "virtio-blk",
    "virtio-9p",
    "virtio-serial",
    "virtio-rng",
    "virtio-balloon",
    "vhost-vsock",
    "virtio-scsi",
    "virtio-net",
    "virtio-mem",
    "virtio-iommu",
);

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
    pub fn driver(&self, base: &str) -> Cow<'static, str> {
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

    /// The transport properties that are set, in govmm's order: `disable-modern`, `romfile`,
    /// `iommu_platform`, `devno` (for [`Props::extend`](crate::props::Props::extend)).
    pub fn props(&self) -> impl Iterator<Item = (Key<'_>, Value<'_>)> {
        let disable_modern = self
            .disable_modern
            .then_some(("disable-modern", Value::Bool(true)));
        disable_modern
            .into_iter()
            .chain(self.props_after_disable_modern())
    }

    /// [`props`](Self::props) without `disable-modern`, for devices that write it earlier
    /// (virtio-net and virtio-scsi, in govmm's order).
    pub(crate) fn props_after_disable_modern(&self) -> impl Iterator<Item = (Key<'_>, Value<'_>)> {
        [
            self.romfile.as_deref().map(|f| ("romfile", Value::from(f))),
            self.iommu_platform
                .then_some(("iommu_platform", Value::Bool(true))),
            self.devno.as_deref().map(|d| ("devno", Value::from(d))),
        ]
        .into_iter()
        .flatten()
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

    /// The literal driver names are borrowed and are the names the general rule gives; any
    /// other base gets the general name, owned.
    #[test]
    fn known_drivers_are_the_general_names() {
        let general = |transport, base: &str| {
            let suffix = match transport {
                Transport::Pci => "pci",
                Transport::Ccw => "ccw",
                Transport::Mmio => "device",
            };
            format!("{base}-{suffix}")
        };
        for transport in [Transport::Pci, Transport::Ccw, Transport::Mmio] {
            for &base in KNOWN_BASES {
                let name = transport.driver(base);
                assert!(matches!(name, Cow::Borrowed(_)), "{base} on {transport:?}");
                assert_eq!(name, general(transport, base));
            }
            let other = transport.driver("virtio-gpu");
            assert!(matches!(other, Cow::Owned(_)));
            assert_eq!(other, general(transport, "virtio-gpu"));
        }
    }

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
            render_options("t", None, &opts.props().collect(), &mut NoFds).unwrap(),
            "disable-modern=on,romfile=efi-virtio.rom"
        );
        let ccw = VirtioOpts {
            iommu_platform: true,
            devno: Some("fe.0.0001".into()),
            ..VirtioOpts::on(Transport::Ccw)
        };
        assert_eq!(
            render_options("t", None, &ccw.props().collect(), &mut NoFds).unwrap(),
            "iommu_platform=on,devno=fe.0.0001"
        );
    }
}
