//! vhost-user devices ([`VhostUserDevice`]): a virtio device whose data path runs in another
//! process (a vhost-user backend daemon such as virtiofsd, a DPDK switch or an SPDK target),
//! reached over a unix socket.
//!
//! Each device is a client `-chardev socket,id=…,path=…` (the daemon listens) followed by the
//! frontend: for net a `-netdev vhost-user` and a virtio-net NIC; for SCSI, block and fs a
//! `vhost-user-scsi` / `vhost-user-blk` / `vhost-user-fs` device on the chardev.
//!
//! **Shared memory is required.** The backend maps guest RAM, so the VM's memory must come
//! from a shared backend (`memory-backend-file` or `memory-backend-memfd` with `share=on`, used
//! as the machine's memory or as every NUMA node's `memdev`); with private RAM the device fails
//! to start. The VM configuration, not this device, sets that up.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Error, Result};
use crate::id::{check_id, check_opt_id};
use crate::net::{check_frontend, virtio_net_device, VirtioNet};
use crate::part::{Part, PartKind};
use crate::pci::PciAddr;
use crate::props::Props;
use crate::transport::{path_str, Transport, VirtioOpts};

/// The longest unix socket path (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;
/// The longest virtio-fs tag (the `tag` field of virtio-fs' config space).
pub const MAX_FS_TAG_LEN: usize = 36;
/// The largest virtqueue QEMU allows.
const MAX_QUEUE_SIZE: u32 = 1024;

/// Which virtio device the vhost-user backend implements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum VhostUserKind {
    /// A NIC: `-netdev vhost-user,…,vhostforce=on` and a virtio-net frontend.
    Net {
        /// The `-netdev` id.
        netdev_id: String,
        /// The guest MAC address, `xx:xx:xx:xx:xx:xx` (QEMU picks one when unset).
        #[serde(default)]
        mac: Option<String>,
        /// Number of queue pairs (`queues=`; above 1 also `mq=on`, and `vectors` on PCI).
        #[serde(default)]
        queues: Option<u32>,
    },
    /// A SCSI controller (`vhost-user-scsi-pci` / `vhost-user-scsi`; no CCW variant exists).
    Scsi {
        /// Number of request queues (`num_queues=`).
        #[serde(default)]
        num_queues: Option<u32>,
    },
    /// A block device (`vhost-user-blk-pci` / `vhost-user-blk`; no CCW variant exists).
    ///
    /// The disk's size and block size come from the backend (QEMU 10 has no `size` or
    /// `logical_block_size` property here; govmm hard-coded both).
    Blk {
        /// Number of virtqueues (`num-queues=`).
        #[serde(default)]
        num_queues: Option<u16>,
        /// Virtqueue size, a power of two up to 1024 (`queue-size=`).
        #[serde(default)]
        queue_size: Option<u32>,
    },
    /// A virtio-fs share (`vhost-user-fs-pci` / `-ccw` / `-device`), e.g. from virtiofsd.
    ///
    /// QEMU 10 has no `cache-size` (DAX window) or `versiontable` property: govmm's were
    /// dropped with the DAX patches that never merged, so they are not offered.
    Fs {
        /// The mount tag the guest uses (`mount -t virtiofs <tag> …`), at most 36 bytes.
        tag: String,
        /// Virtqueue size, a power of two up to 1024 (`queue-size=`).
        #[serde(default)]
        queue_size: Option<u16>,
        /// Number of request queues (`num-request-queues=`).
        #[serde(default)]
        num_request_queues: Option<u16>,
    },
}

/// A vhost-user device: a client socket chardev and the frontend that uses it.
///
/// The guest's RAM must be shared (see the [module docs](self)).
///
/// ```
/// use hvarch_devices::vhost_user::{VhostUserDevice, VhostUserKind};
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let fs = VhostUserDevice::new("fs0", "char-fs0", "/run/virtiofsd.sock",
///     VhostUserKind::Fs { tag: "kataShared".into(), queue_size: Some(1024), num_request_queues: None });
/// let args: Vec<String> = fs.parts().unwrap().iter()
///     .flat_map(|p| p.to_args(Syntax::Options, &mut NoFds).unwrap()).collect();
/// assert_eq!(args, [
///     "-chardev", "socket,id=char-fs0,path=/run/virtiofsd.sock",
///     "-device", "vhost-user-fs-pci,id=fs0,chardev=char-fs0,tag=kataShared,queue-size=1024",
/// ]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserDevice {
    /// The device id.
    pub id: String,
    /// The `-chardev` id.
    pub chardev_id: String,
    /// The backend daemon's listening socket (at most 107 bytes).
    pub socket: PathBuf,
    /// What the backend implements.
    pub kind: VhostUserKind,
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

impl VhostUserDevice {
    /// A PCI vhost-user device `id` whose chardev `chardev_id` connects to `socket`.
    pub fn new(
        id: impl Into<String>,
        chardev_id: impl Into<String>,
        socket: impl Into<PathBuf>,
        kind: VhostUserKind,
    ) -> Self {
        VhostUserDevice {
            id: id.into(),
            chardev_id: chardev_id.into(),
            socket: socket.into(),
            kind,
            bus: None,
            addr: None,
            virtio: VirtioOpts::default(),
        }
    }

    /// The frontend driver on this transport (not for net, whose frontend is virtio-net).
    fn driver(&self) -> Result<&'static str> {
        // QEMU names the MMIO variants of scsi and blk without a suffix, and has no CCW
        // variant of them.
        Ok(match (&self.kind, self.virtio.transport) {
            (VhostUserKind::Scsi { .. }, Transport::Pci) => "vhost-user-scsi-pci",
            (VhostUserKind::Scsi { .. }, Transport::Mmio) => "vhost-user-scsi",
            (VhostUserKind::Blk { .. }, Transport::Pci) => "vhost-user-blk-pci",
            (VhostUserKind::Blk { .. }, Transport::Mmio) => "vhost-user-blk",
            (VhostUserKind::Fs { .. }, Transport::Pci) => "vhost-user-fs-pci",
            (VhostUserKind::Fs { .. }, Transport::Mmio) => "vhost-user-fs-device",
            (VhostUserKind::Fs { .. }, Transport::Ccw) => "vhost-user-fs-ccw",
            (VhostUserKind::Net { .. }, _) => "virtio-net",
            (_, Transport::Ccw) => {
                return Err(invalid(
                    self.kind(),
                    "virtio.transport",
                    "ccw",
                    format!("QEMU has no {}-ccw device", self.kind()),
                ))
            }
        })
    }
}

fn check_queue_size(what: &'static str, size: Option<u32>) -> Result<()> {
    match size {
        Some(q) if !q.is_power_of_two() || !(4..=MAX_QUEUE_SIZE).contains(&q) => Err(invalid(
            what,
            "queue_size",
            q,
            "must be a power of two from 4 to 1024",
        )),
        _ => Ok(()),
    }
}

fn at_least_one(what: &'static str, field: &'static str, n: Option<u64>) -> Result<()> {
    if n == Some(0) {
        return Err(invalid(what, field, 0, "must be at least 1"));
    }
    Ok(())
}

impl QemuDevice for VhostUserDevice {
    fn kind(&self) -> &'static str {
        match self.kind {
            VhostUserKind::Net { .. } => "vhost-user-net",
            VhostUserKind::Scsi { .. } => "vhost-user-scsi",
            VhostUserKind::Blk { .. } => "vhost-user-blk",
            VhostUserKind::Fs { .. } => "vhost-user-fs",
        }
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        check_id(what, "chardev_id", &self.chardev_id)?;
        let socket = path_str(what, "socket", &self.socket)?;
        if socket.len() > MAX_SOCKET_PATH_LEN {
            return Err(invalid(
                what,
                "socket",
                socket,
                "unix socket paths are at most 107 bytes",
            ));
        }
        match &self.kind {
            VhostUserKind::Net {
                netdev_id,
                mac,
                queues,
            } => {
                check_id(what, "netdev_id", netdev_id)?;
                at_least_one(what, "queues", queues.map(u64::from))?;
                return check_frontend(
                    what,
                    mac.as_deref(),
                    self.bus.as_deref(),
                    self.addr,
                    &self.virtio,
                );
            }
            VhostUserKind::Scsi { num_queues } => {
                at_least_one(what, "num_queues", num_queues.map(u64::from))?;
                self.driver()?;
            }
            VhostUserKind::Blk {
                num_queues,
                queue_size,
            } => {
                at_least_one(what, "num_queues", num_queues.map(u64::from))?;
                check_queue_size(what, *queue_size)?;
                self.driver()?;
            }
            VhostUserKind::Fs {
                tag,
                queue_size,
                num_request_queues,
            } => {
                if tag.is_empty() {
                    return Err(Error::MissingField { what, field: "tag" });
                }
                if tag.len() > MAX_FS_TAG_LEN {
                    return Err(invalid(what, "tag", tag, "must be at most 36 bytes"));
                }
                check_queue_size(what, queue_size.map(u32::from))?;
                at_least_one(
                    what,
                    "num_request_queues",
                    num_request_queues.map(u64::from),
                )?;
                if self.virtio.disable_modern {
                    return Err(invalid(
                        what,
                        "disable_modern",
                        "set",
                        "vhost-user-fs is a modern-only device",
                    ));
                }
                self.driver()?;
            }
        }
        check_opt_id(what, "bus", self.bus.as_deref())?;
        self.virtio.validate_with_addr(what, self.addr)
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        let what = self.kind();
        // A client socket: the backend daemon is the server.
        let chardev = Part::new(
            PartKind::Chardev,
            Props::new()
                .with("backend", "socket")
                .with("id", self.chardev_id.as_str())
                .with("path", path_str(what, "socket", &self.socket)?),
        );
        let common = || {
            Props::new()
                .with("id", self.id.as_str())
                .with("chardev", self.chardev_id.as_str())
        };
        let placement = || {
            Props::new()
                .opt("bus", self.bus.as_deref())
                .opt("addr", self.addr)
        };
        emit(chardev)?;
        match &self.kind {
            VhostUserKind::Net {
                netdev_id,
                mac,
                queues,
            } => {
                let netdev = Part::new(
                    PartKind::Netdev,
                    Props::new()
                        .with("type", "vhost-user")
                        .with("id", netdev_id.as_str())
                        .with("chardev", self.chardev_id.as_str())
                        .with("vhostforce", true)
                        .opt("queues", queues.filter(|&q| q > 1)),
                );
                let device = virtio_net_device(&VirtioNet {
                    id: &self.id,
                    netdev: netdev_id,
                    mac: mac.as_deref(),
                    bus: self.bus.as_deref(),
                    addr: self.addr,
                    queues: queues.map_or(1, |q| q as usize),
                    virtio: &self.virtio,
                });
                emit(netdev)?;
                emit(device)
            }
            VhostUserKind::Scsi { num_queues } => {
                let device = Part::device(
                    self.driver()?,
                    common()
                        .extend(placement())
                        .opt("num_queues", *num_queues)
                        .extend(self.virtio.props()),
                );
                emit(device)
            }
            VhostUserKind::Blk {
                num_queues,
                queue_size,
            } => {
                let device = Part::device(
                    self.driver()?,
                    common()
                        .extend(placement())
                        .opt("num-queues", *num_queues)
                        .opt("queue-size", *queue_size)
                        .extend(self.virtio.props()),
                );
                emit(device)
            }
            VhostUserKind::Fs {
                tag,
                queue_size,
                num_request_queues,
            } => {
                let device = Part::device(
                    self.driver()?,
                    common()
                        .with("tag", tag.as_str())
                        .extend(placement())
                        .opt("queue-size", *queue_size)
                        .opt("num-request-queues", *num_request_queues)
                        .extend(self.virtio.props()),
                );
                emit(device)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{
        args, bad_id, bad_mac, bad_path, devno, id, mac, nul_text, path, qmp_adds, short_text,
        transport, Cases,
    };
    use proptest::prelude::*;
    use serde_json::json;

    fn net() -> VhostUserDevice {
        VhostUserDevice::new(
            "net1",
            "char1",
            "/tmp/nonexistentsocket.socket",
            VhostUserKind::Net {
                netdev_id: "net1-netdev".into(),
                mac: Some("00:11:22:33:44:55".into()),
                queues: None,
            },
        )
    }

    /// govmm: `-chardev socket,id=char1,path=/tmp/nonexistentsocket.socket -netdev
    /// type=vhost-user,id=net1,chardev=char1,vhostforce -device virtio-net-pci,netdev=net1,
    /// mac=00:11:22:33:44:55,romfile=`. Differences: `vhost-user` is the implied netdev type,
    /// `vhostforce=on`, the device has an id, no empty `romfile=`.
    #[test]
    fn govmm_reference_net() {
        assert_eq!(
            args(&net()),
            [
                "-chardev",
                "socket,id=char1,path=/tmp/nonexistentsocket.socket",
                "-netdev",
                "vhost-user,id=net1-netdev,chardev=char1,vhostforce=on",
                "-device",
                "virtio-net-pci,id=net1,netdev=net1-netdev,mac=00:11:22:33:44:55",
            ]
        );
    }

    /// govmm: `-device vhost-user-scsi-pci,id=scsi1,chardev=char1,romfile=…`.
    #[test]
    fn govmm_reference_scsi() {
        let mut scsi = VhostUserDevice::new(
            "scsi1",
            "char1",
            "/tmp/s.sock",
            VhostUserKind::Scsi { num_queues: None },
        );
        scsi.virtio.romfile = Some("efi-virtio.rom".into());
        assert_eq!(
            args(&scsi)[3],
            "vhost-user-scsi-pci,id=scsi1,chardev=char1,romfile=efi-virtio.rom"
        );
    }

    /// govmm: `-device vhost-user-blk-pci,logical_block_size=4096,size=512M,chardev=char1,
    /// romfile=`. Differences: QEMU 10's vhost-user-blk has no `logical_block_size` or `size`
    /// (the backend reports both), so they are gone; the device has an id.
    #[test]
    fn govmm_reference_blk() {
        let mut blk = VhostUserDevice::new(
            "blk1",
            "char1",
            "/tmp/b.sock",
            VhostUserKind::Blk {
                num_queues: Some(2),
                queue_size: Some(256),
            },
        );
        blk.bus = Some("rp1".into());
        blk.addr = Some(PciAddr::slot_only(0).unwrap());
        assert_eq!(
            args(&blk)[3],
            "vhost-user-blk-pci,id=blk1,chardev=char1,bus=rp1,addr=00,num-queues=2,queue-size=256"
        );
        // govmm ExecutePCIVhostUserDevAdd: {"driver","id","chardev","addr"} + bus.
        let parts = blk.parts().unwrap();
        assert_eq!(
            parts[1].qmp_add(&mut NoFds).unwrap().arguments,
            json!({"driver": "vhost-user-blk-pci", "id": "blk1", "chardev": "char1",
                   "bus": "rp1", "addr": "00", "num-queues": 2, "queue-size": 256})
        );
        blk.virtio = VirtioOpts::on(Transport::Mmio);
        blk.addr = None;
        assert_eq!(
            args(&blk)[3],
            "vhost-user-blk,id=blk1,chardev=char1,bus=rp1,num-queues=2,queue-size=256"
        );
    }

    /// govmm: `-device vhost-user-fs-pci,chardev=char1,tag=tag,cache-size=…M,
    /// versiontable=/dev/shm/fuse_shared_versions,romfile=`. Differences: QEMU 10 has no
    /// `cache-size` or `versiontable`; the device has an id.
    #[test]
    fn govmm_reference_fs_and_transports() {
        let mut fs = VhostUserDevice::new(
            "fs1",
            "char1",
            "/tmp/fs.sock",
            VhostUserKind::Fs {
                tag: "tag".into(),
                queue_size: None,
                num_request_queues: Some(2),
            },
        );
        assert_eq!(
            args(&fs)[3],
            "vhost-user-fs-pci,id=fs1,chardev=char1,tag=tag,num-request-queues=2"
        );
        fs.virtio = VirtioOpts {
            devno: Some("fe.0.0004".into()),
            ..VirtioOpts::on(Transport::Ccw)
        };
        assert_eq!(
            args(&fs)[3],
            "vhost-user-fs-ccw,id=fs1,chardev=char1,tag=tag,num-request-queues=2,devno=fe.0.0004"
        );
        fs.virtio = VirtioOpts::on(Transport::Mmio);
        assert!(args(&fs)[3].starts_with("vhost-user-fs-device,"));
        assert_eq!(
            fs.parts().unwrap()[1]
                .render(Syntax::Json, &mut NoFds)
                .unwrap(),
            r#"{"driver":"vhost-user-fs-device","id":"fs1","chardev":"char1","tag":"tag","num-request-queues":2}"#
        );
    }

    /// Hot plug: chardev-add (client socket), netdev_add (govmm `ExecuteNetdevChardevAdd`:
    /// `{"type","id","chardev"}` + queues), device_add.
    #[test]
    fn net_qmp() {
        let mut dev = net();
        dev.kind = VhostUserKind::Net {
            netdev_id: "n1".into(),
            mac: None,
            queues: Some(2),
        };
        let calls = qmp_adds(&dev);
        assert_eq!(calls[0].command, "chardev-add");
        assert_eq!(
            calls[0].arguments,
            json!({"id": "char1", "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": "/tmp/nonexistentsocket.socket"}}}}})
        );
        assert_eq!(calls[1].command, "netdev_add");
        assert_eq!(
            calls[1].arguments,
            json!({"type": "vhost-user", "id": "n1", "chardev": "char1",
                   "vhostforce": true, "queues": 2})
        );
        assert_eq!(
            calls[2].arguments,
            json!({"driver": "virtio-net-pci", "id": "net1", "netdev": "n1",
                   "mq": true, "vectors": 6})
        );
    }

    #[test]
    fn errors_name_the_field() {
        let mut fs = VhostUserDevice::new(
            "fs",
            "c",
            "/s",
            VhostUserKind::Fs {
                tag: "t".repeat(37),
                queue_size: None,
                num_request_queues: None,
            },
        );
        assert!(fs.validate().unwrap_err().to_string().contains("`tag`"));
        fs.kind = VhostUserKind::Fs {
            tag: String::new(),
            queue_size: None,
            num_request_queues: None,
        };
        assert_eq!(
            fs.validate().unwrap_err().to_string(),
            "vhost-user-fs: `tag` is required"
        );
        fs.kind = VhostUserKind::Fs {
            tag: "t".into(),
            queue_size: Some(100),
            num_request_queues: None,
        };
        assert!(fs
            .validate()
            .unwrap_err()
            .to_string()
            .contains("queue_size"));
        fs.kind = VhostUserKind::Fs {
            tag: "t".into(),
            queue_size: None,
            num_request_queues: None,
        };
        fs.virtio.disable_modern = true;
        assert!(fs
            .validate()
            .unwrap_err()
            .to_string()
            .contains("disable_modern"));
        fs.virtio.disable_modern = false;
        fs.socket = PathBuf::from(format!("/{}", "s".repeat(107)));
        assert!(fs.validate().unwrap_err().to_string().contains("`socket`"));
        fs.socket = PathBuf::new();
        assert!(fs.validate().unwrap_err().to_string().contains("`socket`"));

        let mut blk = VhostUserDevice::new(
            "b",
            "c",
            "/s",
            VhostUserKind::Blk {
                num_queues: None,
                queue_size: None,
            },
        );
        blk.virtio = VirtioOpts {
            devno: Some("fe.0.0001".into()),
            ..VirtioOpts::on(Transport::Ccw)
        };
        assert!(blk
            .validate()
            .unwrap_err()
            .to_string()
            .contains("vhost-user-blk-ccw"));
        let mut n = net();
        n.kind = VhostUserKind::Net {
            netdev_id: "n".into(),
            mac: Some("zz".into()),
            queues: None,
        };
        assert!(n.validate().unwrap_err().to_string().contains("`mac`"));
        n.chardev_id = "c,server=on".into();
        assert!(n.validate().unwrap_err().to_string().contains("chardev_id"));
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = r#"
            id = "fs0"
            chardev_id = "char-fs0"
            socket = "/run/kata/vhost-fs.sock"
            addr = "06"
            [kind]
            type = "fs"
            tag = "kataShared"
            queue_size = 1024
        "#;
        let fs: VhostUserDevice = toml::from_str(text).unwrap();
        assert!(matches!(fs.kind, VhostUserKind::Fs { .. }));
        let again: VhostUserDevice = toml::from_str(&toml::to_string(&fs).unwrap()).unwrap();
        assert_eq!(again, fs);
        let bad = text.replace("queue_size = 1024", "cache_size = 1024");
        assert!(toml::from_str::<VhostUserDevice>(&bad).is_err());
        let device: crate::Device = serde_json::from_str(
            r#"{"type": "vhost-user", "id": "b0", "chardev_id": "c0", "socket": "/s.sock",
                "kind": {"type": "blk"}}"#,
        )
        .unwrap();
        assert_eq!(device.kind(), "vhost-user-blk");
    }

    fn queue_size() -> impl Strategy<Value = u32> {
        (2u32..=10).prop_map(|shift| 1 << shift)
    }

    fn bad_queue_size() -> impl Strategy<Value = u16> {
        prop_oneof![
            Just(0u16),
            Just(2),
            Just(2048),
            (5u16..1024).prop_filter("power of two", |q| !q.is_power_of_two())
        ]
    }

    fn kind() -> impl Strategy<Value = VhostUserKind> {
        let queues = || proptest::option::of(1u16..);
        prop_oneof![
            (id(), proptest::option::of(mac()), queues()).prop_map(|(netdev_id, mac, queues)| {
                VhostUserKind::Net {
                    netdev_id,
                    mac,
                    queues: queues.map(u32::from),
                }
            }),
            queues().prop_map(|n| VhostUserKind::Scsi {
                num_queues: n.map(u32::from)
            }),
            (queues(), proptest::option::of(queue_size())).prop_map(|(num_queues, queue_size)| {
                VhostUserKind::Blk {
                    num_queues,
                    queue_size,
                }
            }),
            (
                short_text(MAX_FS_TAG_LEN),
                proptest::option::of(queue_size()),
                queues()
            )
                .prop_map(|(tag, size, num_request_queues)| VhostUserKind::Fs {
                    tag,
                    queue_size: size.and_then(|s| u16::try_from(s).ok()),
                    num_request_queues,
                }),
        ]
    }

    /// Valid devices: vhost-user-scsi and -blk have no CCW variant, vhost-user-fs is
    /// modern-only.
    fn device() -> impl Strategy<Value = VhostUserDevice> {
        (
            id(),
            id(),
            path(),
            kind(),
            proptest::option::of(id()),
            transport(),
        )
            .prop_map(|(id, chardev_id, socket, kind, bus, (mut virtio, addr))| {
                match kind {
                    VhostUserKind::Scsi { .. } | VhostUserKind::Blk { .. }
                        if virtio.transport == Transport::Ccw =>
                    {
                        virtio = VirtioOpts::on(Transport::Mmio)
                    }
                    VhostUserKind::Fs { .. } => virtio.disable_modern = false,
                    _ => {}
                }
                VhostUserDevice {
                    bus,
                    addr,
                    virtio,
                    ..VhostUserDevice::new(id, chardev_id, socket, kind)
                }
            })
    }

    /// `device` as a (modern) vhost-user-fs device.
    fn fs(
        device: &mut VhostUserDevice,
        tag: String,
        queue_size: Option<u16>,
        num_request_queues: Option<u16>,
    ) {
        device.kind = VhostUserKind::Fs {
            tag,
            queue_size,
            num_request_queues,
        };
        device.virtio.disable_modern = false;
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        let net = |netdev_id: String, mac, queues| VhostUserKind::Net {
            netdev_id,
            mac,
            queues,
        };
        Cases::new(device())
            .fault("id", bad_id(), |d, v| d.id = v)
            .fault("chardev_id", bad_id(), |d, v| d.chardev_id = v)
            .fault("socket", bad_path(), |d, v| d.socket = v)
            .fault("socket", "/[a-z]{107,120}", |d, v| d.socket = v.into())
            .fault("path", nul_text(), |d, v| d.socket = v.into())
            .fault("netdev_id", bad_id(), move |d, v| {
                d.kind = net(v, None, None)
            })
            .fault("queues", Just(0), move |d, v| {
                d.kind = net("n0".into(), None, Some(v))
            })
            .fault("mac", bad_mac(), move |d, v| {
                d.kind = net("n0".into(), Some(v), None)
            })
            .fault("num_queues", Just(0), |d, v| {
                d.kind = VhostUserKind::Scsi {
                    num_queues: Some(v),
                }
            })
            .fault("num_queues", Just(0), |d, v| {
                d.kind = VhostUserKind::Blk {
                    num_queues: Some(v),
                    queue_size: None,
                }
            })
            .fault("queue_size", bad_queue_size(), |d, v| {
                d.kind = VhostUserKind::Blk {
                    num_queues: None,
                    queue_size: Some(v.into()),
                }
            })
            .fault("queue_size", bad_queue_size(), |d, v| {
                fs(d, "fs".into(), Some(v), None)
            })
            .fault("tag", "|[a-z]{37,40}", |d, v| fs(d, v, None, None))
            .fault("tag", nul_text(), |d, v| fs(d, v, None, None))
            .fault("num_request_queues", Just(0), |d, v| {
                fs(d, "fs".into(), None, Some(v))
            })
            .fault("disable_modern", Just(()), |d, ()| {
                fs(d, "fs".into(), None, None);
                d.virtio = VirtioOpts {
                    disable_modern: true,
                    ..VirtioOpts::default()
                };
            })
            .fault(
                "virtio.transport",
                (devno(), any::<bool>()),
                |d, (devno, scsi)| {
                    d.kind = if scsi {
                        VhostUserKind::Scsi { num_queues: None }
                    } else {
                        VhostUserKind::Blk {
                            num_queues: None,
                            queue_size: None,
                        }
                    };
                    d.virtio = VirtioOpts {
                        devno: Some(devno),
                        ..VirtioOpts::on(Transport::Ccw)
                    };
                    d.addr = None;
                },
            )
            .fault("bus", bad_id(), |d, v| d.bus = Some(v))
            // On a vhost-user-fs device, which every transport has.
            .virtio_faults(|d| {
                if !matches!(d.kind, VhostUserKind::Fs { .. }) {
                    fs(d, "fs".into(), None, None);
                }
                (&mut d.virtio, &mut d.addr)
            })
            .check();
    }
}
