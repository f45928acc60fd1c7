//! Networking: a `-netdev` backend ([`NetBackend`]: tap by name or by descriptors, macvtap,
//! user-mode) with its virtio-net frontend, together one [`NetDevice`].
//!
//! The vhost-user backend lives in [`crate::vhost_user`]. Multi-queue follows govmm: the queue
//! count is the number of tap descriptors (or `queues` for a tap opened by name), and more than
//! one queue turns on `mq=on` (plus `vectors=2*queues+2` on PCI).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Error, Result};
use crate::fd::FdArg;
use crate::id::{check_id, check_opt_id};
use crate::part::{Part, PartKind};
use crate::pci::PciAddr;
use crate::props::{Props, Value};
use crate::transport::{path_str, Transport, VirtioOpts};

/// The longest Linux interface name (`IFNAMSIZ` less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// The host side of a [`NetDevice`]: what its `-netdev` is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum NetBackend {
    /// A tap interface QEMU opens by name (`-netdev tap,ifname=…`).
    Tap {
        /// The host interface name (at most 15 bytes).
        ifname: String,
        /// The script QEMU runs after opening the tap; `None` writes `script=no` (Kata's
        /// choice: no script).
        #[serde(default)]
        script: Option<PathBuf>,
        /// The script QEMU runs when closing the tap; `None` writes `downscript=no`.
        #[serde(default)]
        downscript: Option<PathBuf>,
        /// Accelerate with vhost-net (`vhost=on`).
        #[serde(default)]
        vhost: bool,
        /// Number of queue pairs of a multi-queue tap (`queues=`, written when above 1).
        #[serde(default)]
        queues: Option<u32>,
    },
    /// A tap whose queues the caller opened: one descriptor per queue (`fds=3:4`).
    TapFds {
        /// The tap queue descriptors; their number is the queue count.
        fds: Vec<FdArg>,
        /// Accelerate with vhost-net (`vhost=on`).
        #[serde(default)]
        vhost: bool,
        /// Pre-opened `/dev/vhost-net` descriptors, one per queue (`vhostfds=`; needs `vhost`).
        #[serde(default)]
        vhostfds: Vec<FdArg>,
    },
    /// A macvtap device's queues, opened by the caller (`/dev/tapN`). QEMU sees a tap, so it
    /// renders as [`NetBackend::TapFds`] does (as govmm did).
    Macvtap {
        /// The macvtap queue descriptors; their number is the queue count.
        fds: Vec<FdArg>,
        /// Accelerate with vhost-net (`vhost=on`).
        #[serde(default)]
        vhost: bool,
        /// Pre-opened `/dev/vhost-net` descriptors, one per queue (`vhostfds=`; needs `vhost`).
        #[serde(default)]
        vhostfds: Vec<FdArg>,
    },
    /// QEMU's user-mode network stack (`-netdev user`), needing no host setup; for tests.
    User {},
}

impl NetBackend {
    /// The number of queue pairs.
    pub fn queues(&self) -> usize {
        match self {
            NetBackend::Tap { queues, .. } => queues.map_or(1, |q| q as usize),
            NetBackend::TapFds { fds, .. } | NetBackend::Macvtap { fds, .. } => fds.len(),
            NetBackend::User {} => 1,
        }
    }

    fn validate(&self, what: &'static str) -> Result<()> {
        match self {
            NetBackend::Tap {
                ifname,
                script,
                downscript,
                queues,
                ..
            } => {
                if ifname.is_empty() {
                    return Err(Error::MissingField {
                        what,
                        field: "ifname",
                    });
                }
                if ifname.len() > MAX_IFNAME_LEN {
                    return Err(invalid(
                        what,
                        "ifname",
                        ifname,
                        "Linux interface names are at most 15 bytes",
                    ));
                }
                if ifname.contains(['/', '\0']) || ifname.chars().any(char::is_whitespace) {
                    return Err(invalid(
                        what,
                        "ifname",
                        ifname,
                        "interface names cannot hold '/', whitespace or NUL",
                    ));
                }
                if let Some(script) = script {
                    path_str(what, "script", script)?;
                }
                if let Some(downscript) = downscript {
                    path_str(what, "downscript", downscript)?;
                }
                if *queues == Some(0) {
                    return Err(invalid(what, "queues", 0, "must be at least 1"));
                }
            }
            NetBackend::TapFds {
                fds,
                vhost,
                vhostfds,
            }
            | NetBackend::Macvtap {
                fds,
                vhost,
                vhostfds,
            } => {
                if fds.is_empty() {
                    return Err(Error::MissingField { what, field: "fds" });
                }
                if !vhostfds.is_empty() && !vhost {
                    return Err(invalid(
                        what,
                        "vhostfds",
                        vhostfds.len(),
                        "vhost descriptors need vhost = true",
                    ));
                }
                if !vhostfds.is_empty() && vhostfds.len() != fds.len() {
                    return Err(invalid(
                        what,
                        "vhostfds",
                        vhostfds.len(),
                        format!("give one per queue: {} (the number of fds)", fds.len()),
                    ));
                }
            }
            NetBackend::User {} => {}
        }
        Ok(())
    }

    /// The `-netdev` part with id `id` (validate first).
    fn part<'a>(&'a self, what: &'static str, id: &'a str) -> Result<Part<'a>> {
        let head = |kind: &'static str| Props::new().with("type", kind).with("id", id);
        let props = match self {
            NetBackend::Tap {
                ifname,
                script,
                downscript,
                vhost,
                queues,
            } => {
                let script = match script {
                    Some(p) => path_str(what, "script", p)?,
                    None => "no",
                };
                let downscript = match downscript {
                    Some(p) => path_str(what, "downscript", p)?,
                    None => "no",
                };
                head("tap")
                    .flag("vhost", *vhost)
                    .with("ifname", ifname.as_str())
                    .with("downscript", downscript)
                    .with("script", script)
                    .opt("queues", queues.filter(|&q| q > 1))
            }
            NetBackend::TapFds {
                fds,
                vhost,
                vhostfds,
            }
            | NetBackend::Macvtap {
                fds,
                vhost,
                vhostfds,
            } => {
                // vhostfds before fds: descriptors are numbered in this order (as govmm did).
                let mut props = head("tap").flag("vhost", *vhost);
                if !vhostfds.is_empty() {
                    props.push("vhostfds", Value::FdList(vhostfds));
                }
                props.push("fds", Value::FdList(fds));
                props
            }
            NetBackend::User {} => head("user"),
        };
        Ok(Part::new(PartKind::Netdev, props))
    }
}

/// A virtio-net NIC (`virtio-net-pci` / `-ccw` / `-device`) on its own `-netdev`.
///
/// ```
/// use hvarch_devices::net::{NetBackend, NetDevice};
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let backend = NetBackend::Tap {
///     ifname: "tap0".into(), script: None, downscript: None, vhost: true, queues: None,
/// };
/// let mut nic = NetDevice::new("net0", "hostnet0", backend);
/// nic.mac = Some("52:54:00:12:34:56".into());
/// let args: Vec<String> = nic.parts().unwrap().iter()
///     .flat_map(|p| p.to_args(Syntax::Options, &mut NoFds).unwrap()).collect();
/// assert_eq!(args, [
///     "-netdev", "tap,id=hostnet0,vhost=on,ifname=tap0,downscript=no,script=no",
///     "-device", "virtio-net-pci,id=net0,netdev=hostnet0,mac=52:54:00:12:34:56",
/// ]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetDevice {
    /// The device id.
    pub id: String,
    /// The `-netdev` id (netdev ids are a namespace of their own; it may equal `id`).
    pub netdev_id: String,
    /// The host side.
    pub backend: NetBackend,
    /// The guest MAC address, `xx:xx:xx:xx:xx:xx` (QEMU picks one when unset).
    #[serde(default)]
    pub mac: Option<String>,
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

impl NetDevice {
    /// A virtio-net-pci NIC `id` on netdev `netdev_id` of `backend`.
    pub fn new(id: impl Into<String>, netdev_id: impl Into<String>, backend: NetBackend) -> Self {
        NetDevice {
            id: id.into(),
            netdev_id: netdev_id.into(),
            backend,
            mac: None,
            bus: None,
            addr: None,
            virtio: VirtioOpts::default(),
        }
    }
}

impl QemuDevice for NetDevice {
    fn kind(&self) -> &'static str {
        "virtio-net"
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        check_id(what, "netdev_id", &self.netdev_id)?;
        self.backend.validate(what)?;
        check_frontend(
            what,
            self.mac.as_deref(),
            self.bus.as_deref(),
            self.addr,
            &self.virtio,
        )
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        let netdev = self.backend.part(self.kind(), &self.netdev_id)?;
        let device = virtio_net_device(&VirtioNet {
            id: &self.id,
            netdev: &self.netdev_id,
            mac: self.mac.as_deref(),
            bus: self.bus.as_deref(),
            addr: self.addr,
            queues: self.backend.queues(),
            virtio: &self.virtio,
        });
        emit(netdev)?;
        emit(device)
    }
}

/// Checks a MAC address: six two-digit hex bytes separated by `:`.
pub(crate) fn check_mac(what: &'static str, field: &'static str, mac: &str) -> Result<()> {
    let bytes: Vec<&str> = mac.split(':').collect();
    let ok = bytes.len() == 6
        && bytes
            .iter()
            .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            what,
            field,
            mac,
            "expected six hex bytes separated by ':', e.g. 52:54:00:12:34:56",
        ))
    }
}

/// Checks the fields of a virtio-net frontend.
pub(crate) fn check_frontend(
    what: &'static str,
    mac: Option<&str>,
    bus: Option<&str>,
    addr: Option<PciAddr>,
    virtio: &VirtioOpts,
) -> Result<()> {
    if let Some(mac) = mac {
        check_mac(what, "mac", mac)?;
    }
    check_opt_id(what, "bus", bus)?;
    virtio.validate_with_addr(what, addr)
}

/// The settings of a virtio-net frontend (shared with vhost-user net).
pub(crate) struct VirtioNet<'a> {
    pub(crate) id: &'a str,
    pub(crate) netdev: &'a str,
    pub(crate) mac: Option<&'a str>,
    pub(crate) bus: Option<&'a str>,
    pub(crate) addr: Option<PciAddr>,
    pub(crate) queues: usize,
    pub(crate) virtio: &'a VirtioOpts,
}

/// The virtio-net `-device` part, in govmm's property order: netdev, mac, bus, addr,
/// disable-modern, mq, vectors, romfile, iommu_platform, devno.
pub(crate) fn virtio_net_device<'a>(net: &VirtioNet<'a>) -> Part<'a> {
    let multi_queue = net.queues > 1;
    // MSI-X vectors: one per queue of each direction, one for config, one for control.
    let vectors =
        (multi_queue && net.virtio.transport == Transport::Pci).then(|| 2 * net.queues as u64 + 2);
    Part::device(
        net.virtio.driver("virtio-net"),
        Props::new()
            .with("id", net.id)
            .with("netdev", net.netdev)
            .opt("mac", net.mac)
            .opt("bus", net.bus)
            .opt("addr", net.addr)
            .flag("disable-modern", net.virtio.disable_modern)
            .flag("mq", multi_queue)
            .opt("vectors", vectors)
            .extend(net.virtio.props_after_disable_modern()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::{FdTable, NoFds, QmpFdNames};
    use crate::part::Syntax;
    use crate::test_support::{
        args_with, bad_id, bad_mac, bad_path, id, mac, nul_text, path, text, transport, Cases,
    };
    use proptest::prelude::*;
    use serde_json::json;
    use std::fs::File;
    use std::os::fd::OwnedFd;

    fn dev_null() -> FdArg {
        FdArg::from(OwnedFd::from(File::open("/dev/null").unwrap()))
    }

    fn tap(ifname: &str) -> NetBackend {
        NetBackend::Tap {
            ifname: ifname.into(),
            script: None,
            downscript: None,
            vhost: true,
            queues: None,
        }
    }

    /// govmm: `-netdev tap,id=tap0,vhost=on,ifname=ceth0,downscript=no,script=no -device
    /// driver=virtio-net-pci,netdev=tap0,mac=01:02:de:ad:be:ef,disable-modern=true,
    /// romfile=efi-virtio.rom`. Differences: the driver is the implied first value (govmm's
    /// `driver=` prefix was a quirk); the device has an `id` (needed to unplug it);
    /// `disable-modern=on`.
    #[test]
    fn govmm_reference_tap() {
        let mut nic = NetDevice::new("net0", "tap0", tap("ceth0"));
        nic.mac = Some("01:02:de:ad:be:ef".into());
        nic.virtio.disable_modern = true;
        nic.virtio.romfile = Some("efi-virtio.rom".into());
        assert_eq!(
            args_with(&nic, &mut NoFds),
            [
                "-netdev",
                "tap,id=tap0,vhost=on,ifname=ceth0,downscript=no,script=no",
                "-device",
                "virtio-net-pci,id=net0,netdev=tap0,mac=01:02:de:ad:be:ef,disable-modern=on,\
                 romfile=efi-virtio.rom",
            ]
        );
    }

    /// govmm: `-netdev tap,id=tap0,vhost=on,fds=3:4 -device driver=virtio-net-pci,netdev=tap0,
    /// mac=01:02:de:ad:be:ef,disable-modern=true,mq=on,vectors=6,romfile=efi-virtio.rom`.
    /// Differences as in the single-queue case.
    #[test]
    fn govmm_reference_multi_queue_fds() {
        let backend = NetBackend::TapFds {
            fds: vec![dev_null(), dev_null()],
            vhost: true,
            vhostfds: vec![],
        };
        let mut nic = NetDevice::new("net0", "tap0", backend);
        nic.mac = Some("01:02:de:ad:be:ef".into());
        nic.virtio.disable_modern = true;
        nic.virtio.romfile = Some("efi-virtio.rom".into());
        let mut table = FdTable::new();
        assert_eq!(
            args_with(&nic, &mut table),
            [
                "-netdev",
                "tap,id=tap0,vhost=on,fds=3:4",
                "-device",
                "virtio-net-pci,id=net0,netdev=tap0,mac=01:02:de:ad:be:ef,disable-modern=on,\
                 mq=on,vectors=6,romfile=efi-virtio.rom",
            ]
        );
        assert_eq!(table.len(), 2);

        // vhost descriptors are numbered too, before the tap queues (as govmm allocated them).
        nic.backend = NetBackend::Macvtap {
            fds: vec![dev_null(), dev_null()],
            vhost: true,
            vhostfds: vec![dev_null(), dev_null()],
        };
        let mut table = FdTable::new();
        assert_eq!(
            args_with(&nic, &mut table)[1],
            "tap,id=tap0,vhost=on,vhostfds=3:4,fds=5:6"
        );
        assert_eq!(table.len(), 4);
        let numbers: Vec<i32> = table.mappings().map(|(n, _)| n).collect();
        assert_eq!(numbers, [3, 4, 5, 6]);
    }

    /// govmm `ExecuteNetdevAddByFds` + `ExecuteNetPCIDeviceAdd`, with `mq` a boolean (govmm
    /// sent the string `"on"`) and the descriptors named for `getfd`.
    #[test]
    fn qmp_matches_govmm_netdev_add_by_fds() {
        let backend = NetBackend::TapFds {
            fds: vec![dev_null(), dev_null()],
            vhost: true,
            vhostfds: vec![dev_null(), dev_null()],
        };
        let mut nic = NetDevice::new("net0", "tap0", backend);
        nic.mac = Some("01:02:de:ad:be:ef".into());
        nic.bus = Some("rp0".into());
        nic.addr = Some(PciAddr::slot_only(0).unwrap());
        let parts = nic.parts().unwrap();
        let mut names = QmpFdNames::new("tap0-fd");
        let netdev = parts[0].qmp_add(&mut names).unwrap();
        assert_eq!(netdev.command, "netdev_add");
        assert_eq!(
            netdev.arguments,
            json!({"type": "tap", "id": "tap0", "vhost": true,
                   "vhostfds": "tap0-fd0:tap0-fd1", "fds": "tap0-fd2:tap0-fd3"})
        );
        assert_eq!(names.pending().len(), 4);
        let device = parts[1].qmp_add(&mut names).unwrap();
        assert_eq!(device.command, "device_add");
        assert_eq!(
            device.arguments,
            json!({"driver": "virtio-net-pci", "id": "net0", "netdev": "tap0",
                   "mac": "01:02:de:ad:be:ef", "bus": "rp0", "addr": "00",
                   "mq": true, "vectors": 6})
        );
        assert_eq!(parts[0].qmp_del().unwrap().command, "netdev_del");
        // A descriptor on the command line must be the descriptor itself, not a name.
        let named = NetDevice::new(
            "n",
            "t",
            NetBackend::TapFds {
                fds: vec![FdArg::Named("fd0".into())],
                vhost: false,
                vhostfds: vec![],
            },
        );
        assert!(named.parts().unwrap()[0]
            .render(Syntax::Options, &mut FdTable::new())
            .is_err());
    }

    /// govmm `ExecuteNetdevAdd`: `{"type","id","ifname","downscript","script"}` + `queues`.
    #[test]
    fn qmp_tap_by_name() {
        let backend = NetBackend::Tap {
            ifname: "tap1".into(),
            script: None,
            downscript: Some("/etc/qemu-ifdown".into()),
            vhost: false,
            queues: Some(4),
        };
        let nic = NetDevice::new("net1", "hostnet1", backend);
        let parts = nic.parts().unwrap();
        assert_eq!(
            parts[0].qmp_add(&mut NoFds).unwrap().arguments,
            json!({"type": "tap", "id": "hostnet1", "ifname": "tap1",
                   "downscript": "/etc/qemu-ifdown", "script": "no", "queues": 4})
        );
        assert_eq!(
            parts[1].render(Syntax::Json, &mut NoFds).unwrap(),
            r#"{"driver":"virtio-net-pci","id":"net1","netdev":"hostnet1","mq":true,"vectors":10}"#
        );
    }

    #[test]
    fn ccw_has_mq_without_vectors_and_user_backend() {
        let backend = NetBackend::Tap {
            ifname: "tap0".into(),
            script: None,
            downscript: None,
            vhost: false,
            queues: Some(2),
        };
        let mut nic = NetDevice::new("net0", "hn0", backend);
        nic.virtio = VirtioOpts {
            devno: Some("fe.0.0003".into()),
            ..VirtioOpts::on(Transport::Ccw)
        };
        assert_eq!(
            args_with(&nic, &mut NoFds)[3],
            "virtio-net-ccw,id=net0,netdev=hn0,mq=on,devno=fe.0.0003"
        );
        let user = NetDevice::new("net0", "user0", NetBackend::User {});
        assert_eq!(
            args_with(&user, &mut NoFds),
            [
                "-netdev",
                "user,id=user0",
                "-device",
                "virtio-net-pci,id=net0,netdev=user0"
            ]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let mut nic = NetDevice::new("net0", "tap0", tap("ceth0"));
        nic.mac = Some("01:02:de:ad:be".into());
        assert!(nic.validate().unwrap_err().to_string().contains("`mac`"));
        nic.mac = Some("01:02:de:ad:be:eg".into());
        assert!(nic.validate().is_err());
        nic.mac = None;
        nic.backend = tap("a-very-long-ifname");
        assert!(nic.validate().unwrap_err().to_string().contains("`ifname`"));
        nic.backend = tap("");
        assert_eq!(
            nic.validate().unwrap_err().to_string(),
            "virtio-net: `ifname` is required"
        );
        nic.backend = NetBackend::TapFds {
            fds: vec![],
            vhost: true,
            vhostfds: vec![],
        };
        assert!(nic.validate().unwrap_err().to_string().contains("`fds`"));
        nic.backend = NetBackend::TapFds {
            fds: vec![dev_null()],
            vhost: false,
            vhostfds: vec![dev_null()],
        };
        assert!(nic
            .validate()
            .unwrap_err()
            .to_string()
            .contains("vhost = true"));
        nic.backend = NetBackend::TapFds {
            fds: vec![dev_null()],
            vhost: true,
            vhostfds: vec![dev_null(), dev_null()],
        };
        assert!(nic
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`vhostfds`"));
        nic.backend = NetBackend::User {};
        nic.netdev_id = "net,id=x".into();
        assert!(nic
            .validate()
            .unwrap_err()
            .to_string()
            .contains("netdev_id"));
        nic.netdev_id = "u".into();
        nic.addr = Some(PciAddr::slot_only(1).unwrap());
        nic.virtio = VirtioOpts::on(Transport::Mmio);
        assert!(nic.validate().unwrap_err().to_string().contains("`addr`"));
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = r#"
            id = "net0"
            netdev_id = "tap0"
            mac = "52:54:00:12:34:56"
            addr = "04"
            [backend]
            type = "tap-fds"
            fds = ["fd0", "fd1"]
            vhost = true
            vhostfds = ["vfd0", "vfd1"]
        "#;
        let nic: NetDevice = toml::from_str(text).unwrap();
        assert_eq!(nic.backend.queues(), 2);
        let again: NetDevice = toml::from_str(&toml::to_string(&nic).unwrap()).unwrap();
        assert_eq!(again, nic);
        assert!(toml::from_str::<NetDevice>(
            "id = \"n\"\nnetdev_id = \"t\"\nbackend = { type = \"user\", restrict = true }"
        )
        .is_err());
        assert!(toml::from_str::<NetDevice>(
            "id = \"n\"\nnetdev_id = \"t\"\nmtu = 1500\nbackend = { type = \"user\" }"
        )
        .is_err());
        let device: crate::Device = serde_json::from_str(
            r#"{"type": "net", "id": "n0", "netdev_id": "t0",
                "backend": {"type": "tap", "ifname": "tap0"}}"#,
        )
        .unwrap();
        assert_eq!(device.kind(), "virtio-net");
    }

    /// A Linux interface name: 1 to 15 bytes, no '/', whitespace or NUL.
    fn ifname() -> impl Strategy<Value = String> {
        "[^/\\s\u{0}]{1,15}".prop_map(|mut name| {
            while name.len() > MAX_IFNAME_LEN {
                name.pop();
            }
            name
        })
    }

    fn named_fds(n: usize) -> Vec<FdArg> {
        (0..n).map(|i| FdArg::Named(format!("fd,{i}"))).collect()
    }

    fn tap_with(
        ifname: &str,
        script: Option<PathBuf>,
        downscript: Option<PathBuf>,
        queues: Option<u32>,
    ) -> NetBackend {
        NetBackend::Tap {
            ifname: ifname.into(),
            script,
            downscript,
            vhost: false,
            queues,
        }
    }

    fn backend() -> impl Strategy<Value = NetBackend> {
        let tap = (
            ifname(),
            proptest::option::of(path()),
            proptest::option::of(path()),
            any::<bool>(),
            proptest::option::of(1u32..=u32::MAX),
        )
            .prop_map(
                |(ifname, script, downscript, vhost, queues)| NetBackend::Tap {
                    ifname,
                    script,
                    downscript,
                    vhost,
                    queues,
                },
            );
        let fds = (
            proptest::collection::vec(text().prop_map(FdArg::Named), 1..4),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(fds, vhost, with_vhostfds, macvtap)| {
                let vhostfds = if vhost && with_vhostfds {
                    named_fds(fds.len())
                } else {
                    Vec::new()
                };
                if macvtap {
                    NetBackend::Macvtap {
                        fds,
                        vhost,
                        vhostfds,
                    }
                } else {
                    NetBackend::TapFds {
                        fds,
                        vhost,
                        vhostfds,
                    }
                }
            });
        prop_oneof![2 => tap, 2 => fds, 1 => Just(NetBackend::User {})]
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        let nic = (
            (id(), id(), backend()),
            (
                proptest::option::of(mac()),
                proptest::option::of(id()),
                transport(),
            ),
        )
            .prop_map(
                |((id, netdev_id, backend), (mac, bus, (virtio, addr)))| NetDevice {
                    mac,
                    bus,
                    addr,
                    virtio,
                    ..NetDevice::new(id, netdev_id, backend)
                },
            );
        let bad_ifname = prop_oneof![
            Just(String::new()),
            "[a-z]{16,20}",
            "[a-z]{0,4}[/ \t\u{0}\u{a0}\u{2003}][a-z]{0,4}",
        ];
        Cases::new(nic)
            .fault("id", bad_id(), |d, v| d.id = v)
            .fault("netdev_id", bad_id(), |d, v| d.netdev_id = v)
            .fault("ifname", bad_ifname, |d, v: String| d.backend = tap(&v))
            .fault("script", bad_path(), |d, v| {
                d.backend = tap_with("tap0", Some(v), None, None)
            })
            .fault("downscript", nul_text(), |d, v| {
                d.backend = tap_with("tap0", None, Some(v.into()), None)
            })
            .fault("queues", Just(0), |d, v| {
                d.backend = tap_with("tap0", None, None, Some(v))
            })
            .fault("fds", any::<bool>(), |d, vhost| {
                d.backend = NetBackend::TapFds {
                    fds: Vec::new(),
                    vhost,
                    vhostfds: Vec::new(),
                }
            })
            .fault("fds", nul_text(), |d, v| {
                d.backend = NetBackend::Macvtap {
                    fds: vec![FdArg::Named(v)],
                    vhost: false,
                    vhostfds: Vec::new(),
                }
            })
            .fault("vhostfds", 1usize..4, |d, n| {
                d.backend = NetBackend::TapFds {
                    fds: named_fds(n),
                    vhost: false,
                    vhostfds: named_fds(n),
                }
            })
            .fault("vhostfds", (1usize..4, 1usize..4), |d, (n, extra)| {
                d.backend = NetBackend::Macvtap {
                    fds: named_fds(n),
                    vhost: true,
                    vhostfds: named_fds(n + extra),
                }
            })
            .fault("mac", bad_mac(), |d, v| d.mac = Some(v))
            .fault("bus", bad_id(), |d, v| d.bus = Some(v))
            .virtio_faults(|d| (&mut d.virtio, &mut d.addr))
            .check();
    }
}
