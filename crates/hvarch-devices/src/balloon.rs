//! The virtio memory balloon ([`BalloonDevice`]): lets the host reclaim guest memory (QMP
//! `balloon`) and the guest report free pages.

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::Result;
use crate::id::{check_id, check_opt_id};
use crate::part::Part;
use crate::pci::PciAddr;
use crate::props::Props;
use crate::transport::VirtioOpts;

/// A virtio-balloon device (`virtio-balloon-pci` / `-ccw` / `-device`).
///
/// ```
/// use hvarch_devices::balloon::BalloonDevice;
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let mut balloon = BalloonDevice::new("balloon0");
/// balloon.deflate_on_oom = true;
/// balloon.free_page_reporting = true;
/// assert_eq!(
///     balloon.parts().unwrap()[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-device", "virtio-balloon-pci,id=balloon0,deflate-on-oom=on,free-page-reporting=on"],
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonDevice {
    /// The device id.
    pub id: String,
    /// Let the guest take pages back from the balloon when it runs out of memory
    /// (`deflate-on-oom=on`).
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// Let the guest report free pages so the host can reclaim them
    /// (`free-page-reporting=on`).
    #[serde(default)]
    pub free_page_reporting: bool,
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

impl BalloonDevice {
    /// A virtio-balloon-pci device `id`.
    pub fn new(id: impl Into<String>) -> Self {
        BalloonDevice {
            id: id.into(),
            deflate_on_oom: false,
            free_page_reporting: false,
            bus: None,
            addr: None,
            virtio: VirtioOpts::default(),
        }
    }
}

impl QemuDevice for BalloonDevice {
    fn kind(&self) -> &'static str {
        "virtio-balloon"
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        check_opt_id(what, "bus", self.bus.as_deref())?;
        self.virtio.validate_with_addr(what, self.addr)
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        emit(Part::device(
            self.virtio.driver("virtio-balloon"),
            Props::new()
                .with("id", self.id.as_str())
                .opt("bus", self.bus.as_deref())
                .opt("addr", self.addr)
                .flag("deflate-on-oom", self.deflate_on_oom)
                .flag("free-page-reporting", self.free_page_reporting)
                .extend(self.virtio.props()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{args, bad_id, id, transport, Cases};
    use crate::transport::Transport;
    use proptest::prelude::*;
    use serde_json::json;

    /// govmm's BalloonDevice case (kata-go.md §2.3:
    /// `-device virtio-balloon-pci,id=balloon0,romfile=efi-virtio.rom,deflate-on-oom=on,disable-modern=true`).
    /// Deliberate differences: transport properties (`disable-modern`, `romfile`) come last
    /// in their usual order, as on every other device; `disable-modern=on` instead of `=true`;
    /// `deflate-on-oom` is written only when on (govmm wrote `=off` too).
    #[test]
    fn govmm_reference_case() {
        let mut balloon = BalloonDevice::new("balloon0");
        balloon.deflate_on_oom = true;
        balloon.virtio.disable_modern = true;
        balloon.virtio.romfile = Some("efi-virtio.rom".into());
        assert_eq!(
            args(&balloon),
            [
                "-device",
                "virtio-balloon-pci,id=balloon0,deflate-on-oom=on,disable-modern=on,romfile=efi-virtio.rom"
            ]
        );
    }

    #[test]
    fn ccw_and_mmio() {
        let mut balloon = BalloonDevice::new("balloon0");
        balloon.deflate_on_oom = true;
        balloon.virtio = VirtioOpts {
            devno: Some("fe.0.0005".into()),
            ..VirtioOpts::on(Transport::Ccw)
        };
        assert_eq!(
            args(&balloon)[1],
            "virtio-balloon-ccw,id=balloon0,deflate-on-oom=on,devno=fe.0.0005"
        );
        balloon.virtio = VirtioOpts::on(Transport::Mmio);
        assert_eq!(
            args(&balloon)[1],
            "virtio-balloon-device,id=balloon0,deflate-on-oom=on"
        );
    }

    #[test]
    fn qmp_and_json() {
        let mut balloon = BalloonDevice::new("balloon0");
        balloon.free_page_reporting = true;
        balloon.bus = Some("rp3".into());
        let part = &balloon.parts().unwrap()[0];
        assert_eq!(
            part.render(Syntax::Json, &mut NoFds).unwrap(),
            r#"{"driver":"virtio-balloon-pci","id":"balloon0","bus":"rp3","free-page-reporting":true}"#
        );
        let add = part.qmp_add(&mut NoFds).unwrap();
        assert_eq!(add.command, "device_add");
        assert_eq!(
            add.arguments,
            json!({"driver": "virtio-balloon-pci", "id": "balloon0", "bus": "rp3",
                   "free-page-reporting": true})
        );
    }

    #[test]
    fn errors_name_the_field() {
        let mut balloon = BalloonDevice::new("balloon 0");
        assert!(balloon
            .validate()
            .unwrap_err()
            .to_string()
            .contains("invalid id"));
        balloon.id = "b".into();
        balloon.virtio.devno = Some("fe.0.0001".into());
        assert!(balloon
            .validate()
            .unwrap_err()
            .to_string()
            .contains("devno"));
        balloon.virtio = VirtioOpts::on(Transport::Ccw);
        balloon.virtio.devno = Some("fe.0.0001".into());
        balloon.addr = Some(PciAddr::slot_only(5).unwrap());
        assert!(balloon.validate().unwrap_err().to_string().contains("addr"));
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = r#"
            id = "balloon0"
            deflate_on_oom = true
            free_page_reporting = true
            addr = "05"
        "#;
        let balloon: BalloonDevice = toml::from_str(text).unwrap();
        assert!(balloon.deflate_on_oom && balloon.free_page_reporting);
        let again: BalloonDevice = toml::from_str(&toml::to_string(&balloon).unwrap()).unwrap();
        assert_eq!(again, balloon);
        assert!(
            toml::from_str::<BalloonDevice>(&format!("{text}\nfree_page_hint = true")).is_err()
        );
        let device: crate::Device =
            toml::from_str(&format!("type = \"balloon\"\n{}", text.trim_start())).unwrap();
        assert_eq!(device, crate::Device::from(balloon));
    }

    fn balloon() -> impl Strategy<Value = BalloonDevice> {
        (
            id(),
            proptest::option::of(id()),
            any::<(bool, bool)>(),
            transport(),
        )
            .prop_map(
                |(id, bus, (deflate_on_oom, free_page_reporting), (virtio, addr))| BalloonDevice {
                    deflate_on_oom,
                    free_page_reporting,
                    bus,
                    addr,
                    virtio,
                    ..BalloonDevice::new(id)
                },
            )
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        Cases::new(balloon())
            .fault("id", bad_id(), |d, v| d.id = v)
            .fault("bus", bad_id(), |d, v| d.bus = Some(v))
            .virtio_faults(|d| (&mut d.virtio, &mut d.addr))
            .check();
    }
}
