//! Block devices: `-blockdev` nodes ([`BlockBackend`]) and the virtio-blk frontend
//! ([`BlockDevice`]).
//!
//! A backend is one node tree: a format node (`raw`, `qcow2`) over a protocol node (`file`,
//! `host_device`), or a protocol node alone (`null-co` for tests). It renders as a single
//! `-blockdev` / `blockdev-add` with the protocol node nested as `file`, so `blockdev-del` of
//! the top node removes it whole.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Result};
use crate::id::{check_id, check_node_name, check_opt_id};
use crate::part::{Part, PartKind};
use crate::pci::PciAddr;
use crate::props::{Props, Value};
use crate::transport::{path_str, VirtioOpts};

/// The storage under a block node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "driver", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BlockProtocol {
    /// A regular image file (`driver=file`).
    File {
        /// The image's path.
        filename: PathBuf,
    },
    /// A host block device such as `/dev/sdb` (`driver=host_device`; QEMU ≥ 6 refuses
    /// `file` for block devices).
    HostDevice {
        /// The device node's path.
        filename: PathBuf,
    },
    /// A node that reads zeroes and discards writes (`driver=null-co`); for tests.
    NullCo {
        /// The virtual size in bytes.
        size: u64,
    },
}

/// The image format above the protocol node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockFormat {
    /// A raw image (`driver=raw`).
    #[default]
    Raw,
    /// A qcow2 image (`driver=qcow2`).
    Qcow2,
    /// No format node: the protocol node is the top node (required for `null-co`).
    None,
}

/// Host I/O mode of a file node (`aio=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aio {
    /// A pool of worker threads (Kata's default).
    Threads,
    /// Linux native AIO (needs `cache.direct=on`).
    Native,
    /// io_uring.
    IoUring,
}

impl Aio {
    fn as_str(self) -> &'static str {
        match self {
            Aio::Threads => "threads",
            Aio::Native => "native",
            Aio::IoUring => "io_uring",
        }
    }
}

/// Host cache settings of a node (`cache.direct`, `cache.no-flush`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlockCache {
    /// Bypass the host page cache (`O_DIRECT`).
    pub direct: bool,
    /// Ignore guest flush requests.
    pub no_flush: bool,
}

/// A `-blockdev` node tree.
///
/// ```
/// use hvarch_devices::block::{BlockBackend, BlockFormat, BlockProtocol};
/// use hvarch_devices::{fd::NoFds, part::Syntax};
/// let backend = BlockBackend::new("disk0", BlockProtocol::File { filename: "/img/a,b.raw".into() });
/// let part = backend.part().unwrap();
/// assert_eq!(
///     part.render(Syntax::Options, &mut NoFds).unwrap(),
///     "driver=raw,node-name=disk0,file.driver=file,file.filename=/img/a,,b.raw",
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockBackend {
    /// The top node's name (what a frontend's `drive=` names). At most 31 bytes.
    pub node_name: String,
    /// The format node (default raw).
    #[serde(default)]
    pub format: BlockFormat,
    /// The protocol node.
    pub protocol: BlockProtocol,
    /// Open read-only (`read-only=on`).
    #[serde(default)]
    pub read_only: bool,
    /// Host cache settings.
    #[serde(default)]
    pub cache: Option<BlockCache>,
    /// Host AIO mode (file and host_device only).
    #[serde(default)]
    pub aio: Option<Aio>,
}

impl BlockBackend {
    /// A raw, writable node `node_name` over `protocol`.
    pub fn new(node_name: impl Into<String>, protocol: BlockProtocol) -> Self {
        BlockBackend {
            node_name: node_name.into(),
            format: if matches!(protocol, BlockProtocol::NullCo { .. }) {
                BlockFormat::None
            } else {
                BlockFormat::Raw
            },
            protocol,
            read_only: false,
            cache: None,
            aio: None,
        }
    }

    /// Checks the node name, paths and option combinations.
    pub fn validate(&self) -> Result<()> {
        const WHAT: &str = "blockdev";
        check_node_name(WHAT, "node_name", &self.node_name)?;
        match &self.protocol {
            BlockProtocol::File { filename } | BlockProtocol::HostDevice { filename } => {
                path_str(WHAT, "filename", filename)?;
            }
            BlockProtocol::NullCo { .. } => {
                if self.format != BlockFormat::None {
                    return Err(invalid(
                        WHAT,
                        "format",
                        format_name(self.format),
                        "null-co has no image format; use format = \"none\"",
                    ));
                }
                if self.aio.is_some() {
                    return Err(invalid(WHAT, "aio", "set", "null-co does no host I/O"));
                }
            }
        }
        if self.aio == Some(Aio::Native) && !self.cache.is_some_and(|c| c.direct) {
            return Err(invalid(
                WHAT,
                "aio",
                "native",
                "native AIO needs cache.direct = true",
            ));
        }
        Ok(())
    }

    /// Pushes the protocol node's options: its driver, then what `after_driver` pushes, then
    /// the protocol's own (filename and aio, or size).
    fn push_protocol<'a>(
        &'a self,
        props: &mut Props<'a>,
        after_driver: impl FnOnce(&mut Props<'a>),
    ) -> Result<()> {
        const WHAT: &str = "blockdev";
        let driver = match &self.protocol {
            BlockProtocol::File { .. } => "file",
            BlockProtocol::HostDevice { .. } => "host_device",
            BlockProtocol::NullCo { .. } => "null-co",
        };
        props.push("driver", Value::literal(driver));
        after_driver(props);
        match &self.protocol {
            BlockProtocol::File { filename } | BlockProtocol::HostDevice { filename } => {
                let aio = self.aio.map(|aio| Value::literal(aio.as_str()));
                props
                    .push("filename", path_str(WHAT, "filename", filename)?)
                    .push_opt("aio", aio);
            }
            // QAPI types null-co's size as `int`: -blockdev wants plain digits, no suffix.
            BlockProtocol::NullCo { size } => {
                props.push("size", *size);
            }
        }
        Ok(())
    }

    /// The `-blockdev` part (validated).
    pub fn part(&self) -> Result<Part<'_>> {
        self.validate()?;
        self.part_of_valid()
    }

    /// The options every `-blockdev` node of this backend has: node name, read-only, cache.
    fn push_common<'a>(&'a self, props: &mut Props<'a>) {
        props
            .push("node-name", self.node_name.as_str())
            .push_flag("read-only", self.read_only);
        if let Some(c) = self.cache {
            let mut cache = Box::<Props<'_>>::default();
            cache.push("direct", c.direct).push("no-flush", c.no_flush);
            props.push("cache", Value::Map(cache));
        }
    }

    /// The `-blockdev` part of a backend already [`validate`](Self::validate)d (by the
    /// device it belongs to).
    pub(crate) fn part_of_valid(&self) -> Result<Part<'_>> {
        let mut props = Props::new();
        match self.format {
            // The protocol node is the top node: driver first, then the common options.
            BlockFormat::None => self.push_protocol(&mut props, |p| self.push_common(p))?,
            format => {
                props.push("driver", Value::literal(format_name(format)));
                self.push_common(&mut props);
                let mut file = Box::<Props<'_>>::default();
                self.push_protocol(&mut file, |_| {})?;
                props.push("file", Value::Map(file));
            }
        }
        Ok(Part::new(PartKind::Blockdev, props))
    }
}

fn format_name(format: BlockFormat) -> &'static str {
    match format {
        BlockFormat::Raw => "raw",
        BlockFormat::Qcow2 => "qcow2",
        BlockFormat::None => "none",
    }
}

/// A virtio-blk disk (`virtio-blk-pci` / `-ccw` / `-device`) on its own [`BlockBackend`].
///
/// Kata's cold-plugged rootfs image and every hot-plugged container disk are this device.
///
/// ```
/// use hvarch_devices::block::{BlockBackend, BlockDevice, BlockProtocol};
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let mut disk = BlockDevice::new("blk0", BlockBackend::new("blk0-node",
///     BlockProtocol::File { filename: "/var/lib/vm.img".into() }));
/// disk.share_rw = true;
/// let args: Vec<String> = disk.parts().unwrap().iter()
///     .flat_map(|p| p.to_args(Syntax::Options, &mut NoFds).unwrap()).collect();
/// assert_eq!(args, [
///     "-blockdev", "driver=raw,node-name=blk0-node,file.driver=file,file.filename=/var/lib/vm.img",
///     "-device", "virtio-blk-pci,id=blk0,drive=blk0-node,share-rw=on",
/// ]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDevice {
    /// The device id.
    pub id: String,
    /// The node the disk reads and writes.
    pub backend: BlockBackend,
    /// The serial number the guest sees (`serial=`; any text, escaped).
    #[serde(default)]
    pub serial: Option<String>,
    /// Number of virtqueues (`num-queues=`).
    #[serde(default)]
    pub num_queues: Option<u16>,
    /// The iothread that runs the disk's I/O (`iothread=`).
    #[serde(default)]
    pub iothread: Option<String>,
    /// Let other users of the image write too (`share-rw=on`; Kata sets it).
    #[serde(default)]
    pub share_rw: bool,
    /// Writeback cache enable as seen by the guest (`config-wce=`).
    #[serde(default)]
    pub config_wce: Option<bool>,
    /// Boot order (`bootindex=`).
    #[serde(default)]
    pub bootindex: Option<u32>,
    /// The bus (a bridge or root port id).
    #[serde(default)]
    pub bus: Option<String>,
    /// The address on the bus.
    #[serde(default)]
    pub addr: Option<PciAddr>,
    /// Transport settings.
    #[serde(default)]
    pub virtio: VirtioOpts,
}

impl BlockDevice {
    /// A virtio-blk-pci disk `id` on `backend`.
    pub fn new(id: impl Into<String>, backend: BlockBackend) -> Self {
        BlockDevice {
            id: id.into(),
            backend,
            serial: None,
            num_queues: None,
            iothread: None,
            share_rw: false,
            config_wce: None,
            bootindex: None,
            bus: None,
            addr: None,
            virtio: VirtioOpts::default(),
        }
    }
}

impl QemuDevice for BlockDevice {
    fn kind(&self) -> &'static str {
        "virtio-blk"
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        self.backend.validate()?;
        check_opt_id(what, "iothread", self.iothread.as_deref())?;
        check_opt_id(what, "bus", self.bus.as_deref())?;
        if self.num_queues == Some(0) {
            return Err(invalid(what, "num_queues", 0, "must be at least 1"));
        }
        self.virtio.validate_with_addr(what, self.addr)
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        emit(self.backend.part_of_valid()?)?;
        let mut props =
            Props::starting_with("driver", Value::Str(self.virtio.driver("virtio-blk")));
        props
            .push("id", self.id.as_str())
            .push("drive", self.backend.node_name.as_str())
            .push_opt("bus", self.bus.as_deref())
            .push_opt("addr", self.addr)
            .push_opt("serial", self.serial.as_deref())
            .push_opt("num-queues", self.num_queues)
            .push_opt("iothread", self.iothread.as_deref())
            .push_opt("config-wce", self.config_wce)
            .push_opt("bootindex", self.bootindex)
            .push_flag("share-rw", self.share_rw)
            .append(self.virtio.props());
        emit(Part::new(PartKind::Device, props))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{args, bad_id, block_backend, id, nul_text, text, transport, Cases};
    use crate::transport::Transport;
    use proptest::prelude::*;
    use serde_json::json;

    /// govmm's reference case (kata-go.md §2.3 BlockDevice), in modern syntax: `-blockdev`
    /// instead of `-drive`, `read-only=on`, `disable-modern=on`, no `scsi=off` (gone from
    /// QEMU), `config-wce=off`, serial = id, share-rw.
    #[test]
    fn govmm_reference_case_in_modern_syntax() {
        let mut backend = BlockBackend::new(
            "hd0",
            BlockProtocol::File {
                filename: "/var/lib/vm.img".into(),
            },
        );
        backend.format = BlockFormat::Qcow2;
        backend.read_only = true;
        backend.aio = Some(Aio::Threads);
        let mut disk = BlockDevice::new("hd0-dev", backend);
        disk.serial = Some("hd0".into());
        disk.config_wce = Some(false);
        disk.share_rw = true;
        disk.virtio.disable_modern = true;
        disk.virtio.romfile = Some("efi-virtio.rom".into());
        assert_eq!(
            args(&disk),
            [
                "-blockdev",
                "driver=qcow2,node-name=hd0,read-only=on,file.driver=file,\
                 file.filename=/var/lib/vm.img,file.aio=threads",
                "-device",
                "virtio-blk-pci,id=hd0-dev,drive=hd0,serial=hd0,config-wce=off,share-rw=on,\
                 disable-modern=on,romfile=efi-virtio.rom",
            ]
        );
    }

    #[test]
    fn qmp_rendering_matches_govmm_blockdev_add() {
        let mut backend = BlockBackend::new(
            "drive-1",
            BlockProtocol::HostDevice {
                filename: "/dev/sdb".into(),
            },
        );
        backend.read_only = true;
        backend.cache = Some(BlockCache {
            direct: true,
            no_flush: false,
        });
        let add = backend.part().unwrap().qmp_add(&mut NoFds).unwrap();
        assert_eq!(add.command, "blockdev-add");
        assert_eq!(
            add.arguments,
            json!({"driver": "raw", "node-name": "drive-1", "read-only": true,
                   "cache": {"direct": true, "no-flush": false},
                   "file": {"driver": "host_device", "filename": "/dev/sdb"}})
        );
    }

    #[test]
    fn null_co_is_a_top_level_protocol_node() {
        let backend = BlockBackend::new("null0", BlockProtocol::NullCo { size: 64 << 20 });
        assert_eq!(
            backend
                .part()
                .unwrap()
                .render(Syntax::Options, &mut NoFds)
                .unwrap(),
            "driver=null-co,node-name=null0,size=67108864"
        );
        let mut bad = backend.clone();
        bad.format = BlockFormat::Raw;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn ccw_and_mmio_drivers() {
        let backend = BlockBackend::new("n", BlockProtocol::NullCo { size: 1 << 20 });
        let mut disk = BlockDevice::new("d", backend);
        disk.virtio = VirtioOpts {
            devno: Some("fe.0.0001".into()),
            ..VirtioOpts::on(Transport::Ccw)
        };
        assert_eq!(
            args(&disk)[3],
            "virtio-blk-ccw,id=d,drive=n,devno=fe.0.0001"
        );
        disk.virtio = VirtioOpts::on(Transport::Mmio);
        assert_eq!(args(&disk)[3], "virtio-blk-device,id=d,drive=n");
    }

    #[test]
    fn errors_name_the_field() {
        let backend = BlockBackend::new(
            "n",
            BlockProtocol::File {
                filename: "".into(),
            },
        );
        let disk = BlockDevice::new("d", backend);
        assert_eq!(
            disk.validate().unwrap_err().to_string(),
            "blockdev: `filename` is required"
        );
        let mut disk = BlockDevice::new(
            "d,x=1",
            BlockBackend::new("n", BlockProtocol::NullCo { size: 1 }),
        );
        assert!(disk
            .validate()
            .unwrap_err()
            .to_string()
            .contains("invalid id"));
        disk.id = "d".into();
        disk.num_queues = Some(0);
        assert!(disk
            .validate()
            .unwrap_err()
            .to_string()
            .contains("num_queues"));
        disk.num_queues = None;
        disk.backend.node_name = "n".repeat(32);
        assert!(disk.validate().is_err());
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = r#"
            id = "disk0"
            share_rw = true
            addr = "03"
            [backend]
            node_name = "disk0-node"
            format = "qcow2"
            read_only = true
            protocol = { driver = "file", filename = "/images/a.qcow2" }
        "#;
        let disk: BlockDevice = toml::from_str(text).unwrap();
        assert_eq!(disk.addr, Some(PciAddr::slot_only(3).unwrap()));
        assert_eq!(disk.backend.format, BlockFormat::Qcow2);
        let again: BlockDevice = toml::from_str(&toml::to_string(&disk).unwrap()).unwrap();
        assert_eq!(again, disk);
        assert!(toml::from_str::<BlockDevice>("id = \"d\"\nbogus = 1").is_err());
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        let disk = (
            (id(), block_backend(), proptest::option::of(text())),
            (
                proptest::option::of(1u16..),
                proptest::option::of(id()),
                any::<(bool, Option<bool>, Option<u32>)>(),
                proptest::option::of(id()),
                transport(),
            ),
        )
            .prop_map(
                |((id, backend, serial), (num_queues, iothread, flags, bus, (virtio, addr)))| {
                    let (share_rw, config_wce, bootindex) = flags;
                    BlockDevice {
                        serial,
                        num_queues,
                        iothread,
                        share_rw,
                        config_wce,
                        bootindex,
                        bus,
                        addr,
                        virtio,
                        ..BlockDevice::new(id, backend)
                    }
                },
            );
        Cases::new(disk)
            .fault("id", bad_id(), |d, v| d.id = v)
            .fault("serial", nul_text(), |d, v| d.serial = Some(v))
            .fault("iothread", bad_id(), |d, v| d.iothread = Some(v))
            .fault("bus", bad_id(), |d, v| d.bus = Some(v))
            .fault("num_queues", Just(0), |d, v| d.num_queues = Some(v))
            .block_backend_faults(|d| &mut d.backend)
            .virtio_faults(|d| (&mut d.virtio, &mut d.addr))
            .check();
    }
}
