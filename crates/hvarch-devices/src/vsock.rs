//! The vhost-vsock device ([`VsockDevice`]): an `AF_VSOCK` socket channel between host and
//! guest (Kata's agent channel when `use_vsock` is on).

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Result};
use crate::fd::FdArg;
use crate::id::{check_id, check_opt_id};
use crate::part::Part;
use crate::pci::PciAddr;
use crate::props::Props;
use crate::transport::VirtioOpts;

/// The lowest guest context id: 0 (hypervisor), 1 (local) and 2 (host) are reserved.
pub const MIN_GUEST_CID: u64 = 3;
/// The highest guest context id. `AF_VSOCK` addresses are 32-bit, and `u32::MAX` itself is
/// `VMADDR_CID_ANY`, which Linux's vhost-vsock refuses (`vhost_vsock_set_cid`: `EINVAL`), so
/// the range ends one below govmm's `MaxGuestCID`.
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// A vhost-vsock device (`vhost-vsock-pci` / `-ccw` / `-device`).
///
/// ```
/// use hvarch_devices::vsock::VsockDevice;
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let vsock = VsockDevice::new("vsock-3", 3);
/// assert_eq!(
///     vsock.parts().unwrap()[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-device", "vhost-vsock-pci,id=vsock-3,guest-cid=3"],
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockDevice {
    /// The device id.
    pub id: String,
    /// The guest's context id ([`MIN_GUEST_CID`] to [`MAX_GUEST_CID`]), unique on the host.
    pub guest_cid: u64,
    /// An open `/dev/vhost-vsock` (`vhostfd=`); QEMU opens it itself when unset.
    #[serde(default)]
    pub vhostfd: Option<FdArg>,
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

impl VsockDevice {
    /// A vhost-vsock-pci device `id` with context id `guest_cid`.
    pub fn new(id: impl Into<String>, guest_cid: u64) -> Self {
        VsockDevice {
            id: id.into(),
            guest_cid,
            vhostfd: None,
            bus: None,
            addr: None,
            virtio: VirtioOpts::default(),
        }
    }
}

impl QemuDevice for VsockDevice {
    fn kind(&self) -> &'static str {
        "vhost-vsock"
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&self.guest_cid) {
            return Err(invalid(
                what,
                "guest_cid",
                self.guest_cid,
                format!(
                    "must be {MIN_GUEST_CID} to {MAX_GUEST_CID} (0-2 and 2^32-1 are reserved; CIDs are 32-bit)"
                ),
            ));
        }
        check_opt_id(what, "bus", self.bus.as_deref())?;
        self.virtio.validate_with_addr(what, self.addr)
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        emit(Part::device(
            self.virtio.driver("vhost-vsock"),
            Props::new()
                .with("id", self.id.as_str())
                .with("guest-cid", self.guest_cid)
                .opt("vhostfd", self.vhostfd.as_ref())
                .opt("bus", self.bus.as_deref())
                .opt("addr", self.addr)
                .extend(self.virtio.props()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::{FdTable, NoFds, QmpFdNames};
    use crate::part::Syntax;
    use crate::test_support::{bad_id, id, nul_text, text, transport, Cases};
    use crate::transport::Transport;
    use proptest::prelude::*;
    use serde_json::json;

    fn dev_null() -> FdArg {
        FdArg::from(std::os::fd::OwnedFd::from(
            std::fs::File::open("/dev/null").unwrap(),
        ))
    }

    /// govmm's VSOCKDevice reference case (kata-go.md §2.3). Deliberate differences:
    /// `disable-modern=on` instead of `=true`; transport properties last.
    #[test]
    fn govmm_reference_case() {
        let mut vsock = VsockDevice::new("vhost-vsock-pci0", 4);
        vsock.virtio.disable_modern = true;
        vsock.virtio.romfile = Some("efi-virtio.rom".into());
        assert_eq!(
            vsock.parts().unwrap()[0]
                .to_args(Syntax::Options, &mut NoFds)
                .unwrap(),
            [
                "-device",
                "vhost-vsock-pci,id=vhost-vsock-pci0,guest-cid=4,disable-modern=on,romfile=efi-virtio.rom"
            ]
        );
    }

    /// A launcher-held `/dev/vhost-vsock` gets the child's fd number; CCW drops PCI options.
    #[test]
    fn vhostfd_on_the_command_line_and_ccw() {
        let mut vsock = VsockDevice::new("vsock-5", 5);
        vsock.vhostfd = Some(dev_null());
        vsock.virtio = VirtioOpts {
            devno: Some("fe.0.0003".into()),
            ..VirtioOpts::on(Transport::Ccw)
        };
        let mut table = FdTable::new();
        assert_eq!(
            vsock.parts().unwrap()[0]
                .render(Syntax::Options, &mut table)
                .unwrap(),
            "vhost-vsock-ccw,id=vsock-5,guest-cid=5,vhostfd=3,devno=fe.0.0003"
        );
        assert_eq!(table.len(), 1);
    }

    /// Hot plug matches govmm's `ExecutePCIVSockAdd` (`guest-cid` as an integer, QEMU's
    /// uint64, where govmm sent a string; the descriptor by its `getfd` name).
    #[test]
    fn qmp_matches_govmm() {
        let mut vsock = VsockDevice::new("vsock-4", 4);
        vsock.vhostfd = Some(dev_null());
        vsock.bus = Some("pci-bridge-0".into());
        vsock.addr = Some(PciAddr::slot_only(1).unwrap());
        vsock.virtio.romfile = Some(String::new());
        let mut names = QmpFdNames::new("vsock-4-fd");
        let add = vsock.parts().unwrap()[0].qmp_add(&mut names).unwrap();
        assert_eq!(add.command, "device_add");
        assert_eq!(
            add.arguments,
            json!({"driver": "vhost-vsock-pci", "id": "vsock-4", "guest-cid": 4,
                   "vhostfd": "vsock-4-fd0", "addr": "01", "bus": "pci-bridge-0",
                   "romfile": ""})
        );
        assert_eq!(names.pending()[0].0, "vsock-4-fd0");
        let vsock = VsockDevice::new("v", 3);
        assert_eq!(
            vsock.parts().unwrap()[0]
                .render(Syntax::Json, &mut NoFds)
                .unwrap(),
            r#"{"driver":"vhost-vsock-pci","id":"v","guest-cid":3}"#
        );
    }

    #[test]
    fn errors_name_the_field() {
        for cid in [0, 2, MAX_GUEST_CID + 1, u64::MAX] {
            let msg = VsockDevice::new("v", cid)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(msg.contains("guest_cid"), "{msg}");
        }
        VsockDevice::new("v", MAX_GUEST_CID).validate().unwrap();
        let mut vsock = VsockDevice::new("v", 3);
        vsock.virtio = VirtioOpts::on(Transport::Mmio);
        vsock.addr = Some(PciAddr::slot_only(1).unwrap());
        assert!(vsock.validate().unwrap_err().to_string().contains("addr"));
        assert!(VsockDevice::new("", 3)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`id` is required"));
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = r#"
            id = "vsock-3"
            guest_cid = 3
            vhostfd = "vhostfd0"
            [virtio]
            transport = "mmio"
        "#;
        let vsock: VsockDevice = toml::from_str(text).unwrap();
        assert_eq!(vsock.vhostfd, Some(FdArg::Named("vhostfd0".into())));
        let again: VsockDevice = toml::from_str(&toml::to_string(&vsock).unwrap()).unwrap();
        assert_eq!(again, vsock);
        assert!(toml::from_str::<VsockDevice>(&format!("{text}\ncid = 3")).is_err());
        let device: crate::Device =
            toml::from_str(&format!("type = \"vsock\"\n{}", text.trim_start())).unwrap();
        assert_eq!(device, crate::Device::from(vsock));
    }

    fn vsock() -> impl Strategy<Value = VsockDevice> {
        (
            id(),
            prop_oneof![MIN_GUEST_CID..=MAX_GUEST_CID, Just(MAX_GUEST_CID)],
            proptest::option::of(text()),
            proptest::option::of(id()),
            transport(),
        )
            .prop_map(|(id, cid, vhostfd, bus, (virtio, addr))| VsockDevice {
                vhostfd: vhostfd.map(FdArg::Named),
                bus,
                addr,
                virtio,
                ..VsockDevice::new(id, cid)
            })
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        let bad_cid = prop_oneof![0..MIN_GUEST_CID, MAX_GUEST_CID + 1..];
        Cases::new(vsock())
            .fault("id", bad_id(), |d, v| d.id = v)
            .fault("guest_cid", bad_cid, |d, v| d.guest_cid = v)
            .fault("vhostfd", nul_text(), |d, v| {
                d.vhostfd = Some(FdArg::Named(v))
            })
            .fault("bus", bad_id(), |d, v| d.bus = Some(v))
            .virtio_faults(|d| (&mut d.virtio, &mut d.addr))
            .check();
    }
}
