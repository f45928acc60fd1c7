//! The virtio entropy device ([`RngDevice`]): an `rng-random` object reading a host entropy
//! source and the `virtio-rng` frontend that feeds it to the guest.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Result};
use crate::id::{check_id, check_opt_id};
use crate::part::Part;
use crate::pci::PciAddr;
use crate::props::Props;
use crate::transport::{path_str, VirtioOpts};

/// A virtio-rng device (`virtio-rng-pci` / `-ccw` / `-device`) on its own `rng-random`
/// object.
///
/// QEMU takes `max_bytes` and `period` independently (each has a default), so either may be
/// set alone: the guest gets at most `max_bytes` every `period` milliseconds.
///
/// ```
/// use hvarch_devices::rng::RngDevice;
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let mut rng = RngDevice::new("rng0-dev", "rng0");
/// rng.filename = Some("/dev/urandom".into());
/// let args: Vec<String> = rng.parts().unwrap().iter()
///     .flat_map(|p| p.to_args(Syntax::Options, &mut NoFds).unwrap()).collect();
/// assert_eq!(args, [
///     "-object", "rng-random,id=rng0,filename=/dev/urandom",
///     "-device", "virtio-rng-pci,id=rng0-dev,rng=rng0",
/// ]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngDevice {
    /// The device id.
    pub id: String,
    /// The id of the `rng-random` object (what the device's `rng=` names).
    pub object_id: String,
    /// The host entropy source (`filename=`; QEMU's default `/dev/urandom`).
    #[serde(default)]
    pub filename: Option<PathBuf>,
    /// The most bytes the guest gets per period (`max-bytes=`; at most `i64::MAX`).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// The rate-limit period in milliseconds (`period=`; at least 1).
    #[serde(default)]
    pub period: Option<u32>,
    /// The bus (a bridge or root port id).
    #[serde(default)]
    pub bus: Option<String>,
    /// The address on the bus (PCI only).
    #[serde(default)]
    pub addr: Option<PciAddr>,
    /// Transport settings.
    #[serde(default)]
    pub virtio: VirtioOpts,
}

impl RngDevice {
    /// A virtio-rng-pci device `id` on a new `rng-random` object `object_id`.
    pub fn new(id: impl Into<String>, object_id: impl Into<String>) -> Self {
        RngDevice {
            id: id.into(),
            object_id: object_id.into(),
            filename: None,
            max_bytes: None,
            period: None,
            bus: None,
            addr: None,
            virtio: VirtioOpts::default(),
        }
    }
}

impl QemuDevice for RngDevice {
    fn kind(&self) -> &'static str {
        "virtio-rng"
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        check_id(what, "object_id", &self.object_id)?;
        if let Some(filename) = &self.filename {
            path_str(what, "filename", filename)?;
        }
        if let Some(max) = self.max_bytes {
            if max > i64::MAX as u64 {
                return Err(invalid(
                    what,
                    "max_bytes",
                    max,
                    "must be less than 2^63 (QEMU reads it as a signed number)",
                ));
            }
        }
        if self.period == Some(0) {
            return Err(invalid(what, "period", 0, "must be at least 1 ms"));
        }
        check_opt_id(what, "bus", self.bus.as_deref())?;
        self.virtio.validate_with_addr(what, self.addr)
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        let filename = match &self.filename {
            Some(f) => Some(path_str(self.kind(), "filename", f)?),
            None => None,
        };
        let object = Part::object(
            "rng-random",
            &self.object_id,
            Props::new().opt("filename", filename),
        );
        let device = Part::device(
            self.virtio.driver("virtio-rng"),
            Props::new()
                .with("id", self.id.as_str())
                .with("rng", self.object_id.as_str())
                .opt("bus", self.bus.as_deref())
                .opt("addr", self.addr)
                .opt("max-bytes", self.max_bytes)
                .opt("period", self.period)
                .extend(self.virtio.props()),
        );
        emit(object)?;
        emit(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{
        args, bad_id, bad_path, id, nul_text, path, qmp_adds, transport, Cases,
    };
    use crate::transport::Transport;
    use proptest::prelude::*;
    use serde_json::json;

    /// govmm's RngDevice reference case (kata-go.md §2.3). Deliberate differences: the device
    /// has its own `id` (govmm gives none and reuses the object id only for `rng=`);
    /// `romfile` (a transport property) comes last.
    #[test]
    fn govmm_reference_case() {
        let mut rng = RngDevice::new("rng0-dev", "rng0");
        rng.filename = Some("/dev/urandom".into());
        rng.max_bytes = Some(20);
        rng.period = Some(500);
        rng.virtio.romfile = Some("efi-virtio.rom".into());
        assert_eq!(
            args(&rng),
            [
                "-object",
                "rng-random,id=rng0,filename=/dev/urandom",
                "-device",
                "virtio-rng-pci,id=rng0-dev,rng=rng0,max-bytes=20,period=500,romfile=efi-virtio.rom",
            ]
        );
    }

    #[test]
    fn ccw_without_the_double_comma_bug() {
        let mut rng = RngDevice::new("rng0-dev", "rng0");
        rng.virtio = VirtioOpts {
            iommu_platform: true,
            devno: Some("fe.0.0004".into()),
            ..VirtioOpts::on(Transport::Ccw)
        };
        assert_eq!(
            args(&rng)[3],
            "virtio-rng-ccw,id=rng0-dev,rng=rng0,iommu_platform=on,devno=fe.0.0004"
        );
    }

    #[test]
    fn qmp_and_json() {
        let mut rng = RngDevice::new("rng1-dev", "rng1");
        rng.filename = Some("/dev/random".into());
        rng.max_bytes = Some(1024);
        let parts = rng.parts().unwrap();
        let calls = qmp_adds(&rng);
        assert_eq!(calls[0].command, "object-add");
        assert_eq!(
            calls[0].arguments,
            json!({"qom-type": "rng-random", "id": "rng1", "filename": "/dev/random"})
        );
        assert_eq!(calls[1].command, "device_add");
        assert_eq!(
            calls[1].arguments,
            json!({"driver": "virtio-rng-pci", "id": "rng1-dev", "rng": "rng1",
                   "max-bytes": 1024})
        );
        assert_eq!(
            parts[0].render(Syntax::Json, &mut NoFds).unwrap(),
            r#"{"qom-type":"rng-random","id":"rng1","filename":"/dev/random"}"#
        );
        let del: Vec<_> = parts
            .iter()
            .rev()
            .map(|p| p.qmp_del().unwrap().command)
            .collect();
        assert_eq!(del, ["device_del", "object-del"]);
    }

    #[test]
    fn errors_name_the_field() {
        let mut rng = RngDevice::new("r", "o");
        rng.period = Some(0);
        assert!(rng.validate().unwrap_err().to_string().contains("`period`"));
        rng.period = Some(1);
        rng.max_bytes = Some(u64::MAX);
        assert!(rng
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`max_bytes`"));
        rng.max_bytes = Some(i64::MAX as u64);
        rng.validate().unwrap();
        rng.object_id = "o,x".into();
        assert!(rng
            .validate()
            .unwrap_err()
            .to_string()
            .contains("object_id"));
        rng.object_id = "o".into();
        rng.filename = Some(PathBuf::new());
        assert_eq!(
            rng.validate().unwrap_err().to_string(),
            "virtio-rng: `filename` is required"
        );
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = r#"
            id = "rng0-dev"
            object_id = "rng0"
            filename = "/dev/urandom"
            period = 1000
        "#;
        let rng: RngDevice = toml::from_str(text).unwrap();
        assert_eq!(rng.period, Some(1000));
        let again: RngDevice = toml::from_str(&toml::to_string(&rng).unwrap()).unwrap();
        assert_eq!(again, rng);
        assert!(toml::from_str::<RngDevice>(&format!("{text}\nrng = \"x\"")).is_err());
        let device: crate::Device =
            toml::from_str(&format!("type = \"rng\"\n{}", text.trim_start())).unwrap();
        assert_eq!(device, crate::Device::from(rng));
    }

    fn rng() -> impl Strategy<Value = RngDevice> {
        (
            (id(), id(), proptest::option::of(path())),
            (
                proptest::option::of(0..=i64::MAX as u64),
                proptest::option::of(1..=u32::MAX),
                proptest::option::of(id()),
            ),
            transport(),
        )
            .prop_map(
                |((id, object_id, filename), (max_bytes, period, bus), (virtio, addr))| RngDevice {
                    filename,
                    max_bytes,
                    period,
                    bus,
                    addr,
                    virtio,
                    ..RngDevice::new(id, object_id)
                },
            )
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        Cases::new(rng())
            .fault("id", bad_id(), |d, v| d.id = v)
            .fault("object_id", bad_id(), |d, v| d.object_id = v)
            .fault("filename", bad_path(), |d, v| d.filename = Some(v))
            .fault("filename", nul_text(), |d, v| d.filename = Some(v.into()))
            .fault("max_bytes", i64::MAX as u64 + 1.., |d, v| {
                d.max_bytes = Some(v)
            })
            .fault("period", Just(0), |d, v| d.period = Some(v))
            .fault("bus", bad_id(), |d, v| d.bus = Some(v))
            .virtio_faults(|d| (&mut d.virtio, &mut d.addr))
            .check();
    }
}
