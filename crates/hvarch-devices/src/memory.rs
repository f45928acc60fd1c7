//! Guest memory: host memory backends ([`MemoryBackend`], `-object memory-backend-*`) and the
//! memory devices that give them to the guest ([`MemoryDevice`]: NVDIMM, DIMM, virtio-mem).
//!
//! A backend alone is also a device (tag `memory-backend`): the VM's main memory
//! (`-numa node,memdev=…` / `-machine memory-backend=…`) is one, as are govmm's memory knobs
//! (`HugePages`, `FileBackedMem`, `MemShared`, `MemPrealloc`). A memory device owns its backend
//! and renders it first: `-object …` then `-device …` (govmm's `Object` emitted the `-device`
//! before its `-object`; creation order is backend first, which is also the only order QMP
//! hot plug can use).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Result};
use crate::id::{check_id, check_opt_id};
use crate::part::Part;
use crate::pci::PciAddr;
use crate::props::Props;
use crate::transport::{path_str, Transport, VirtioOpts};

/// Where a [`MemoryBackend`]'s memory comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum MemoryBackendKind {
    /// Anonymous memory (`memory-backend-ram`).
    #[default]
    Ram,
    /// A file or a hugetlbfs mount (`memory-backend-file`).
    File {
        /// The file, or a directory to create a temporary file in (`mem-path=`).
        mem_path: PathBuf,
        /// Map the file read-only (`readonly=on`; e.g. Kata's NVDIMM rootfs image on x86).
        /// An NVDIMM on a read-only backend must be unarmed.
        #[serde(default)]
        readonly: bool,
        /// Let QEMU discard the contents on exit instead of writing them back
        /// (`discard-data=on`).
        #[serde(default)]
        discard_data: bool,
        /// The file is persistent memory (DAX); QEMU syncs with pmem semantics (`pmem=on`).
        #[serde(default)]
        pmem: bool,
    },
    /// An anonymous memfd (`memory-backend-memfd`), shareable with vhost-user daemons
    /// without a filesystem.
    Memfd {
        /// Back it with huge pages (`hugetlb=on`).
        #[serde(default)]
        hugetlb: bool,
        /// The huge page size in bytes (`hugetlbsize=`; needs `hugetlb`). The host's default
        /// huge page size when unset.
        #[serde(default)]
        hugetlbsize: Option<u64>,
        /// Seal the memfd against growing and shrinking (`seal=`; QEMU's default is on).
        #[serde(default)]
        seal: Option<bool>,
    },
}

/// A host memory backend, `-object memory-backend-{ram,file,memfd},id=…,size=…`.
///
/// ```
/// use hvarch_devices::memory::MemoryBackend;
/// use hvarch_devices::{fd::NoFds, part::Syntax};
/// let mut mem = MemoryBackend::hugepages("dimm1", 1 << 30);
/// mem.share = Some(true);
/// mem.prealloc = true;
/// assert_eq!(
///     mem.part().unwrap().to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-object", "memory-backend-file,id=dimm1,size=1G,mem-path=/dev/hugepages,share=on,prealloc=on"],
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    /// The object id (what `memdev=` names).
    pub id: String,
    /// The size in bytes (`size=`; more than 0).
    pub size: u64,
    /// Where the memory comes from (default anonymous RAM).
    #[serde(default)]
    pub kind: MemoryBackendKind,
    /// Map the memory shared (`share=`), as vhost-user devices and virtio-fs need. QEMU's
    /// default (off, but on for memfd) when unset.
    #[serde(default)]
    pub share: Option<bool>,
    /// Allocate all of it up front (`prealloc=on`).
    #[serde(default)]
    pub prealloc: bool,
    /// Allow the host to merge identical pages (`merge=`, KSM).
    #[serde(default)]
    pub merge: Option<bool>,
    /// Include the memory in core dumps (`dump=`).
    #[serde(default)]
    pub dump: Option<bool>,
}

/// The hugetlbfs mount [`MemoryBackend::hugepages`] uses.
pub const HUGEPAGES_PATH: &str = "/dev/hugepages";

impl MemoryBackend {
    /// A backend `id` of `size` bytes from `kind`, with QEMU's defaults otherwise.
    pub fn new(id: impl Into<String>, size: u64, kind: MemoryBackendKind) -> Self {
        MemoryBackend {
            id: id.into(),
            size,
            kind,
            share: None,
            prealloc: false,
            merge: None,
            dump: None,
        }
    }

    /// Anonymous RAM (`memory-backend-ram`).
    pub fn ram(id: impl Into<String>, size: u64) -> Self {
        MemoryBackend::new(id, size, MemoryBackendKind::Ram)
    }

    /// A writable file (`memory-backend-file,mem-path=…`).
    pub fn file(id: impl Into<String>, size: u64, mem_path: impl Into<PathBuf>) -> Self {
        MemoryBackend::new(
            id,
            size,
            MemoryBackendKind::File {
                mem_path: mem_path.into(),
                readonly: false,
                discard_data: false,
                pmem: false,
            },
        )
    }

    /// Huge pages: a file backend on the hugetlbfs mount [`HUGEPAGES_PATH`]
    /// (`memory-backend-file,mem-path=/dev/hugepages`), what govmm's `HugePages` knob made.
    /// `size` must be a multiple of the host's huge page size.
    pub fn hugepages(id: impl Into<String>, size: u64) -> Self {
        MemoryBackend::file(id, size, HUGEPAGES_PATH)
    }

    /// An anonymous memfd (`memory-backend-memfd`) on normal pages.
    pub fn memfd(id: impl Into<String>, size: u64) -> Self {
        MemoryBackend::new(
            id,
            size,
            MemoryBackendKind::Memfd {
                hugetlb: false,
                hugetlbsize: None,
                seal: None,
            },
        )
    }

    /// The QOM type, e.g. `memory-backend-file`.
    pub fn qom_type(&self) -> &'static str {
        match self.kind {
            MemoryBackendKind::Ram => "memory-backend-ram",
            MemoryBackendKind::File { .. } => "memory-backend-file",
            MemoryBackendKind::Memfd { .. } => "memory-backend-memfd",
        }
    }

    /// Whether the memory is mapped read-only (a file backend with `readonly`).
    pub fn is_readonly(&self) -> bool {
        matches!(self.kind, MemoryBackendKind::File { readonly: true, .. })
    }

    /// The file path, for a file backend.
    pub fn mem_path(&self) -> Option<&Path> {
        match &self.kind {
            MemoryBackendKind::File { mem_path, .. } => Some(mem_path),
            _ => None,
        }
    }

    /// Checks the id, the size and the kind's settings.
    pub fn validate(&self) -> Result<()> {
        const WHAT: &str = "memory-backend";
        check_id(WHAT, "id", &self.id)?;
        if self.size == 0 {
            return Err(invalid(WHAT, "size", 0, "must be more than 0"));
        }
        match &self.kind {
            MemoryBackendKind::Ram => {}
            MemoryBackendKind::File { mem_path, .. } => {
                path_str(WHAT, "mem_path", mem_path)?;
            }
            MemoryBackendKind::Memfd {
                hugetlb,
                hugetlbsize,
                ..
            } => {
                if let Some(page) = *hugetlbsize {
                    if !hugetlb {
                        return Err(invalid(WHAT, "hugetlbsize", page, "needs hugetlb = true"));
                    }
                    if !page.is_power_of_two() {
                        return Err(invalid(WHAT, "hugetlbsize", page, "must be a power of two"));
                    }
                    if self.size % page != 0 {
                        return Err(invalid(
                            WHAT,
                            "size",
                            self.size,
                            format!("must be a multiple of hugetlbsize ({page})"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The `-object` / `object-add` part (validated).
    pub fn part(&self) -> Result<Part<'_>> {
        const WHAT: &str = "memory-backend";
        self.validate()?;
        let common = Props::new().size("size", self.size);
        let kind = match &self.kind {
            MemoryBackendKind::Ram => Props::new(),
            MemoryBackendKind::File {
                mem_path,
                readonly,
                discard_data,
                pmem,
            } => Props::new()
                .with("mem-path", path_str(WHAT, "mem_path", mem_path)?)
                .flag("readonly", *readonly)
                .flag("discard-data", *discard_data)
                .flag("pmem", *pmem),
            MemoryBackendKind::Memfd {
                hugetlb,
                hugetlbsize,
                seal,
            } => Props::new()
                .flag("hugetlb", *hugetlb)
                .opt_size("hugetlbsize", *hugetlbsize)
                .opt("seal", *seal),
        };
        Ok(Part::object(
            self.qom_type(),
            &self.id,
            common
                .extend(kind)
                .opt("share", self.share)
                .flag("prealloc", self.prealloc)
                .opt("merge", self.merge)
                .opt("dump", self.dump),
        ))
    }
}

impl QemuDevice for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory-backend"
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        MemoryBackend::validate(self)
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        emit(self.part()?)
    }
}

/// The guest-visible side of a [`MemoryDevice`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MemoryDeviceKind {
    /// A non-volatile DIMM (`nvdimm`; the machine needs `nvdimm=on`), e.g. Kata's rootfs image.
    Nvdimm {
        /// Tell the guest the NVDIMM is read-only (`unarmed=on`). Required when the backend is
        /// read-only (QEMU refuses otherwise).
        #[serde(default)]
        unarmed: bool,
        /// The size of the label area in bytes (`label-size=`; at least 128 KiB).
        #[serde(default)]
        label_size: Option<u64>,
    },
    /// A hot-pluggable RAM DIMM (`pc-dimm`; the machine needs free `slots` and `maxmem`).
    PcDimm {
        /// The DIMM slot (`slot=`); QEMU picks a free one when unset.
        #[serde(default)]
        slot: Option<u32>,
        /// The guest NUMA node (`node=`).
        #[serde(default)]
        node: Option<u32>,
        /// The guest physical address (`addr=`); QEMU picks one when unset.
        #[serde(default)]
        addr: Option<u64>,
    },
    /// A virtio-mem device (`virtio-mem-pci`; PCI only): memory the guest plugs in blocks,
    /// resized at run time with `qom-set … requested-size`.
    VirtioMem {
        /// How much of the backend the guest should plug, in bytes (`requested-size=`; at
        /// most the backend's size, a multiple of the block size).
        requested_size: u64,
        /// The plug granularity in bytes (`block-size=`; a power of two).
        #[serde(default)]
        block_size: Option<u64>,
        /// The guest NUMA node (`node=`).
        #[serde(default)]
        node: Option<u32>,
        /// The bus (a bridge or root port id).
        #[serde(default)]
        bus: Option<String>,
        /// The address on the bus.
        #[serde(default)]
        addr: Option<PciAddr>,
        /// Transport settings (PCI only).
        #[serde(default)]
        virtio: VirtioOpts,
    },
}

/// A memory device on its own [`MemoryBackend`]: `-object memory-backend-…` then
/// `-device nvdimm|pc-dimm|virtio-mem-pci,id=…,memdev=…`.
///
/// Hot plug sends `object-add` (flat arguments, QEMU ≥ 6; govmm's `props` wrapper is gone
/// from QEMU) then `device_add`; unplug is the reverse.
///
/// ```
/// use hvarch_devices::memory::{MemoryBackend, MemoryDevice};
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let dimm = MemoryDevice::pc_dimm("dimm0", MemoryBackend::ram("mem0", 512 << 20));
/// let args: Vec<String> = dimm.parts().unwrap().iter()
///     .flat_map(|p| p.to_args(Syntax::Options, &mut NoFds).unwrap()).collect();
/// assert_eq!(args, [
///     "-object", "memory-backend-ram,id=mem0,size=512M",
///     "-device", "pc-dimm,id=dimm0,memdev=mem0",
/// ]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryDevice {
    /// The device id.
    pub id: String,
    /// The memory behind the device.
    pub backend: MemoryBackend,
    /// The device type and its settings.
    pub kind: MemoryDeviceKind,
}

impl MemoryDevice {
    /// An NVDIMM `id` on `backend`, unarmed exactly when the backend is read-only.
    pub fn nvdimm(id: impl Into<String>, backend: MemoryBackend) -> Self {
        let unarmed = backend.is_readonly();
        MemoryDevice {
            id: id.into(),
            backend,
            kind: MemoryDeviceKind::Nvdimm {
                unarmed,
                label_size: None,
            },
        }
    }

    /// A DIMM `id` on `backend`, slot, node and address chosen by QEMU.
    pub fn pc_dimm(id: impl Into<String>, backend: MemoryBackend) -> Self {
        MemoryDevice {
            id: id.into(),
            backend,
            kind: MemoryDeviceKind::PcDimm {
                slot: None,
                node: None,
                addr: None,
            },
        }
    }

    /// A `virtio-mem-pci` `id` on `backend`, asking the guest to plug `requested_size` bytes.
    pub fn virtio_mem(id: impl Into<String>, backend: MemoryBackend, requested_size: u64) -> Self {
        MemoryDevice {
            id: id.into(),
            backend,
            kind: MemoryDeviceKind::VirtioMem {
                requested_size,
                block_size: None,
                node: None,
                bus: None,
                addr: None,
                virtio: VirtioOpts::default(),
            },
        }
    }
}

impl QemuDevice for MemoryDevice {
    fn kind(&self) -> &'static str {
        match self.kind {
            MemoryDeviceKind::Nvdimm { .. } => "nvdimm",
            MemoryDeviceKind::PcDimm { .. } => "pc-dimm",
            MemoryDeviceKind::VirtioMem { .. } => "virtio-mem",
        }
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = QemuDevice::kind(self);
        check_id(what, "id", &self.id)?;
        self.backend.validate()?;
        match &self.kind {
            MemoryDeviceKind::Nvdimm {
                unarmed,
                label_size,
            } => {
                if self.backend.is_readonly() && !unarmed {
                    return Err(invalid(
                        what,
                        "unarmed",
                        false,
                        "must be true when the backend is read-only",
                    ));
                }
                if let Some(size) = *label_size {
                    if size < 128 << 10 {
                        return Err(invalid(what, "label_size", size, "must be at least 128K"));
                    }
                }
            }
            MemoryDeviceKind::PcDimm { slot, .. } => {
                if let Some(slot) = *slot {
                    if i32::try_from(slot).is_err() {
                        return Err(invalid(what, "slot", slot, "at most 2147483647"));
                    }
                }
            }
            MemoryDeviceKind::VirtioMem {
                requested_size,
                block_size,
                bus,
                virtio,
                ..
            } => {
                if virtio.transport != Transport::Pci {
                    return Err(invalid(
                        what,
                        "virtio.transport",
                        format!("{:?}", virtio.transport).to_lowercase(),
                        "QEMU has virtio-mem-pci only",
                    ));
                }
                virtio.validate(what)?;
                check_opt_id(what, "bus", bus.as_deref())?;
                if *requested_size > self.backend.size {
                    return Err(invalid(
                        what,
                        "requested_size",
                        requested_size,
                        format!("more than the backend's size ({})", self.backend.size),
                    ));
                }
                if let Some(block) = *block_size {
                    if !block.is_power_of_two() {
                        return Err(invalid(what, "block_size", block, "must be a power of two"));
                    }
                    if requested_size % block != 0 {
                        return Err(invalid(
                            what,
                            "requested_size",
                            requested_size,
                            format!("must be a multiple of block_size ({block})"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        let common = Props::new()
            .with("id", self.id.as_str())
            .with("memdev", self.backend.id.as_str());
        let device = match &self.kind {
            MemoryDeviceKind::Nvdimm {
                unarmed,
                label_size,
            } => Part::device(
                "nvdimm",
                common
                    .opt_size("label-size", *label_size)
                    .flag("unarmed", *unarmed),
            ),
            MemoryDeviceKind::PcDimm { slot, node, addr } => Part::device(
                "pc-dimm",
                common
                    .opt("slot", *slot)
                    .opt("node", *node)
                    .opt("addr", *addr),
            ),
            MemoryDeviceKind::VirtioMem {
                requested_size,
                block_size,
                node,
                bus,
                addr,
                virtio,
            } => Part::device(
                virtio.driver("virtio-mem"),
                common
                    .size("requested-size", *requested_size)
                    .opt_size("block-size", *block_size)
                    .opt("node", *node)
                    .opt("bus", bus.as_deref())
                    .opt("addr", *addr)
                    .extend(virtio.props()),
            ),
        };
        emit(self.backend.part()?)?;
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
    use crate::Device;
    use proptest::prelude::*;
    use serde_json::json;

    fn qmp(device: &dyn QemuDevice) -> Vec<(&'static str, serde_json::Value)> {
        qmp_adds(device)
            .into_iter()
            .map(|call| (call.command, call.arguments))
            .collect()
    }

    /// govmm `Object` (kata-go.md §2.3): `-device nvdimm,id=nv0,memdev=mem0 -object
    /// memory-backend-file,id=mem0,mem-path=/root,size=65536`. Differences: the `-object`
    /// comes first (creation order), the size is `64K`, and `size` precedes `mem-path` (one
    /// property order for every backend, the one govmm's memory knobs used).
    #[test]
    fn govmm_nvdimm_object() {
        let nv = MemoryDevice::nvdimm("nv0", MemoryBackend::file("mem0", 65536, "/root"));
        assert_eq!(
            args(&nv),
            [
                "-object",
                "memory-backend-file,id=mem0,size=64K,mem-path=/root",
                "-device",
                "nvdimm,id=nv0,memdev=mem0"
            ]
        );
    }

    /// Kata 2.x x86 read-only NVDIMM image: object `readonly=on` + device `unarmed=on`; on
    /// arm64 Kata omitted `readonly` (QEMU 5.1 lacked it), which is the writable form above.
    #[test]
    fn kata_readonly_nvdimm() {
        let mut backend = MemoryBackend::file("mem0", 128 << 20, "/images/rootfs.img");
        if let MemoryBackendKind::File { readonly, .. } = &mut backend.kind {
            *readonly = true;
        }
        let nv = MemoryDevice::nvdimm("nv0", backend);
        assert_eq!(
            args(&nv),
            [
                "-object",
                "memory-backend-file,id=mem0,size=128M,mem-path=/images/rootfs.img,readonly=on",
                "-device",
                "nvdimm,id=nv0,memdev=mem0,unarmed=on"
            ]
        );
        let mut armed = nv.clone();
        armed.kind = MemoryDeviceKind::Nvdimm {
            unarmed: false,
            label_size: None,
        };
        assert_eq!(
            armed.validate().unwrap_err().to_string(),
            "nvdimm: invalid `unarmed` \"false\": must be true when the backend is read-only"
        );
    }

    /// govmm's memory knobs (kata-go.md §2.5), the `-object` alone: identical strings.
    #[test]
    fn govmm_memory_knob_backends() {
        let mut huge = MemoryBackend::hugepages("dimm1", 1 << 30);
        huge.share = Some(true);
        huge.prealloc = true;
        let mut ram = MemoryBackend::ram("dimm1", 1 << 30);
        ram.share = Some(true);
        ram.prealloc = true;
        let mut file = MemoryBackend::file("dimm1", 1 << 30, "foobar");
        file.share = Some(true);
        let render = |m: &MemoryBackend| m.part().unwrap().to_args(Syntax::Options, &mut NoFds);
        assert_eq!(
            render(&huge).unwrap(),
            [
                "-object",
                "memory-backend-file,id=dimm1,size=1G,mem-path=/dev/hugepages,share=on,prealloc=on"
            ]
        );
        assert_eq!(
            render(&ram).unwrap(),
            [
                "-object",
                "memory-backend-ram,id=dimm1,size=1G,share=on,prealloc=on"
            ]
        );
        assert_eq!(
            render(&file).unwrap(),
            [
                "-object",
                "memory-backend-file,id=dimm1,size=1G,mem-path=foobar,share=on"
            ]
        );
        // As a device of its own, the same single part.
        assert_eq!(args(&ram), render(&ram).unwrap());
        assert_eq!(QemuDevice::id(&ram), Some("dimm1"));
    }

    /// govmm `ExecHotplugMemory(ctx, "memory-backend-file", "mem1", "/dev/hugepages", 1024,
    /// true)`: object-add with `props: {size, mem-path, share}` then device_add pc-dimm
    /// `dimm<id>`. Modernised: flat object-add arguments (QEMU ≥ 6).
    #[test]
    fn govmm_exec_hotplug_memory() {
        let mut backend = MemoryBackend::hugepages("mem1", 1024 << 20);
        backend.share = Some(true);
        let dimm = MemoryDevice::pc_dimm("dimmmem1", backend);
        assert_eq!(
            qmp(&dimm),
            [
                (
                    "object-add",
                    json!({"qom-type": "memory-backend-file", "id": "mem1",
                           "mem-path": "/dev/hugepages", "size": 1073741824u64, "share": true})
                ),
                (
                    "device_add",
                    json!({"driver": "pc-dimm", "id": "dimmmem1", "memdev": "mem1"})
                ),
            ]
        );
        let parts = dimm.parts().unwrap();
        let dels: Vec<_> = parts.iter().rev().map(|p| p.qmp_del().unwrap()).collect();
        assert_eq!(dels[0].command, "device_del");
        assert_eq!(dels[1].command, "object-del");
        assert_eq!(dels[1].arguments, json!({"id": "mem1"}));
    }

    /// govmm `ExecuteNVDIMMDeviceAdd(ctx, "1", "/img", size, &true)`: object
    /// `nvdimmbackmem1` with `mem-path`, `size`, `share: true`, `pmem: true`, then device
    /// `nvdimm1`. Modernised: flat object-add arguments.
    #[test]
    fn govmm_execute_nvdimm_device_add() {
        let mut backend = MemoryBackend::new(
            "nvdimmbackmem1",
            2 << 20,
            MemoryBackendKind::File {
                mem_path: "/img".into(),
                readonly: false,
                discard_data: false,
                pmem: true,
            },
        );
        backend.share = Some(true);
        let nv = MemoryDevice::nvdimm("nvdimm1", backend);
        assert_eq!(
            qmp(&nv),
            [
                (
                    "object-add",
                    json!({"qom-type": "memory-backend-file", "id": "nvdimmbackmem1",
                           "mem-path": "/img", "size": 2097152u64, "share": true, "pmem": true})
                ),
                (
                    "device_add",
                    json!({"driver": "nvdimm", "id": "nvdimm1", "memdev": "nvdimmbackmem1"})
                ),
            ]
        );
    }

    /// govmm `ExecMemdevAdd(ctx, "memory-backend-ram", "mem2", "", 512, false, "virtio-mem-pci",
    /// "vm0")` shape, with virtio-mem's required `requested-size`.
    #[test]
    fn virtio_mem_and_json_syntax() {
        let mut vm =
            MemoryDevice::virtio_mem("vm0", MemoryBackend::memfd("mem2", 512 << 20), 256 << 20);
        if let MemoryDeviceKind::VirtioMem {
            block_size, bus, ..
        } = &mut vm.kind
        {
            *block_size = Some(2 << 20);
            *bus = Some("rp1".into());
        }
        assert_eq!(
            args(&vm),
            [
                "-object",
                "memory-backend-memfd,id=mem2,size=512M",
                "-device",
                "virtio-mem-pci,id=vm0,memdev=mem2,requested-size=256M,block-size=2M,bus=rp1"
            ]
        );
        let parts = vm.parts().unwrap();
        assert_eq!(
            parts[0].render(Syntax::Json, &mut NoFds).unwrap(),
            r#"{"qom-type":"memory-backend-memfd","id":"mem2","size":536870912}"#
        );
        assert_eq!(
            qmp(&vm)[1].1,
            json!({"driver": "virtio-mem-pci", "id": "vm0", "memdev": "mem2",
                   "requested-size": 268435456u64, "block-size": 2097152u64, "bus": "rp1"})
        );
    }

    #[test]
    fn memfd_and_dimm_options() {
        let mut backend = MemoryBackend::new(
            "m",
            4 << 30,
            MemoryBackendKind::Memfd {
                hugetlb: true,
                hugetlbsize: Some(1 << 30),
                seal: Some(false),
            },
        );
        backend.merge = Some(false);
        backend.dump = Some(false);
        let mut dimm = MemoryDevice::pc_dimm("d0", backend);
        dimm.kind = MemoryDeviceKind::PcDimm {
            slot: Some(1),
            node: Some(0),
            addr: Some(0x1_4000_0000),
        };
        assert_eq!(
            args(&dimm),
            [
                "-object",
                "memory-backend-memfd,id=m,size=4G,hugetlb=on,hugetlbsize=1G,seal=off,\
                 merge=off,dump=off",
                "-device",
                "pc-dimm,id=d0,memdev=m,slot=1,node=0,addr=5368709120"
            ]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = |d: &dyn QemuDevice| d.validate().unwrap_err().to_string();
        assert_eq!(
            err(&MemoryBackend::ram("m", 0)),
            "memory-backend: invalid `size` \"0\": must be more than 0"
        );
        assert_eq!(
            err(&MemoryBackend::file("m", 1, "")),
            "memory-backend: `mem_path` is required"
        );
        let bad = MemoryBackend::new(
            "m",
            1 << 20,
            MemoryBackendKind::Memfd {
                hugetlb: false,
                hugetlbsize: Some(2 << 20),
                seal: None,
            },
        );
        assert!(err(&bad).contains("`hugetlbsize`"));
        let mut vm = MemoryDevice::virtio_mem("v", MemoryBackend::ram("m", 1 << 20), 2 << 20);
        assert!(err(&vm).contains("virtio-mem: invalid `requested_size`"));
        if let MemoryDeviceKind::VirtioMem {
            requested_size,
            virtio,
            ..
        } = &mut vm.kind
        {
            *requested_size = 1 << 20;
            *virtio = VirtioOpts::on(Transport::Mmio);
        }
        assert!(err(&vm).contains("`virtio.transport`"));
        let mut nv = MemoryDevice::nvdimm("n", MemoryBackend::file("m", 1 << 20, "/f"));
        nv.kind = MemoryDeviceKind::Nvdimm {
            unarmed: false,
            label_size: Some(4096),
        };
        assert!(err(&nv).contains("`label_size`"));
        let nv = MemoryDevice::nvdimm("n,1", MemoryBackend::file("m", 1 << 20, "/f"));
        assert!(err(&nv).contains("invalid id"));
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = r#"
            id = "nv0"
            kind = { type = "nvdimm", unarmed = true }
            [backend]
            id = "mem0"
            size = 65536
            share = true
            kind = { type = "file", mem_path = "/root", readonly = true }
        "#;
        let nv: MemoryDevice = toml::from_str(text).unwrap();
        assert!(nv.backend.is_readonly());
        nv.validate().unwrap();
        let again: MemoryDevice = toml::from_str(&toml::to_string(&nv).unwrap()).unwrap();
        assert_eq!(again, nv);

        let text = r#"
            id = "vm0"
            kind = { type = "virtio-mem", requested_size = 1048576, addr = "04" }
            backend = { id = "m", size = 2097152 }
        "#;
        let vm: MemoryDevice = toml::from_str(text).unwrap();
        assert_eq!(vm.backend.kind, MemoryBackendKind::Ram);
        let again: MemoryDevice = toml::from_str(&toml::to_string(&vm).unwrap()).unwrap();
        assert_eq!(again, vm);

        let device: Device = toml::from_str(
            "type = \"memory-backend\"\nid = \"dimm1\"\nsize = 1073741824\nprealloc = true",
        )
        .unwrap();
        assert_eq!(device.kind(), "memory-backend");
        let again: Device = toml::from_str(&toml::to_string(&device).unwrap()).unwrap();
        assert_eq!(again, device);

        assert!(toml::from_str::<MemoryBackend>("id = \"m\"\nsize = 1\nhugepages = true").is_err());
        let unknown_in_kind = "id = \"m\"\nsize = 1\nkind = { type = \"file\", mem_path = \"/a\", \
                               x = 1 }";
        assert!(toml::from_str::<MemoryBackend>(unknown_in_kind).is_err());
        let unknown_in_device = "id = \"d\"\nkind = { type = \"pc-dimm\", bogus = 1 }\n\
                                 backend = { id = \"m\", size = 1 }";
        assert!(toml::from_str::<MemoryDevice>(unknown_in_device).is_err());
    }

    /// A valid backend: RAM, a file or memfd (hugetlb pages or not), of a size that is a
    /// multiple of its page size (any size for RAM and files, often).
    fn arb_backend() -> impl Strategy<Value = MemoryBackend> {
        let file = (path(), any::<(bool, bool, bool)>()).prop_map(|(mem_path, (r, d, m))| {
            MemoryBackendKind::File {
                mem_path,
                readonly: r,
                discard_data: d,
                pmem: m,
            }
        });
        let memfd = (
            any::<bool>(),
            12u32..=30,
            any::<bool>(),
            any::<Option<bool>>(),
        )
            .prop_map(|(hugetlb, shift, sized, seal)| MemoryBackendKind::Memfd {
                hugetlb,
                hugetlbsize: (hugetlb && sized).then_some(1 << shift),
                seal,
            });
        let kind = prop_oneof![Just(MemoryBackendKind::Ram), file, memfd];
        let size = prop_oneof![1u64.., (1u64..1 << 20).prop_map(|units| units << 30)];
        (
            (id(), size, kind),
            any::<(Option<bool>, bool, Option<bool>, Option<bool>)>(),
        )
            .prop_map(|((id, size, kind), (share, prealloc, merge, dump))| {
                // A multiple of the huge page size, kept when it already is one.
                let size = match kind {
                    MemoryBackendKind::Memfd {
                        hugetlbsize: Some(page),
                        ..
                    } if size % page != 0 => (size % (1 << 20)).max(1) * page,
                    _ => size,
                };
                MemoryBackend {
                    id,
                    size,
                    kind,
                    share,
                    prealloc,
                    merge,
                    dump,
                }
            })
    }

    /// A valid memory device on a valid backend.
    fn arb_device() -> impl Strategy<Value = MemoryDevice> {
        let nvdimm = (any::<bool>(), proptest::option::of(128u64 << 10..)).prop_map(
            |(unarmed, label_size)| MemoryDeviceKind::Nvdimm {
                unarmed,
                label_size,
            },
        );
        let dimm = (
            proptest::option::of(0..=i32::MAX as u32),
            any::<Option<u32>>(),
            any::<Option<u64>>(),
        )
            .prop_map(|(slot, node, addr)| MemoryDeviceKind::PcDimm { slot, node, addr });
        let virtio_mem = (
            (any::<u64>(), proptest::option::of(12u32..=30)),
            (any::<Option<u32>>(), proptest::option::of(id())),
            transport().prop_filter("virtio-mem is PCI only", |(v, _)| {
                v.transport == Transport::Pci
            }),
        )
            .prop_map(|((pick, block), (node, bus), (virtio, addr))| {
                // `requested_size` is fixed once the backend's size is known.
                MemoryDeviceKind::VirtioMem {
                    requested_size: pick,
                    block_size: block.map(|shift| 1 << shift),
                    node,
                    bus,
                    addr,
                    virtio,
                }
            });
        (id(), arb_backend(), prop_oneof![nvdimm, dimm, virtio_mem]).prop_map(
            |(id, backend, mut kind)| {
                match &mut kind {
                    MemoryDeviceKind::Nvdimm { unarmed, .. } => {
                        *unarmed |= backend.is_readonly();
                    }
                    MemoryDeviceKind::VirtioMem {
                        requested_size,
                        block_size,
                        ..
                    } => {
                        // At most the backend's size, a multiple of the block size.
                        let block = block_size.unwrap_or(1);
                        let blocks = backend.size / block;
                        *requested_size = (*requested_size % blocks.saturating_add(1)) * block;
                    }
                    MemoryDeviceKind::PcDimm { .. } => {}
                }
                MemoryDevice { id, backend, kind }
            },
        )
    }

    /// `device` as a virtio-mem device (PCI, no bus) asking for `requested_size`.
    fn virtio_mem(device: &mut MemoryDevice, requested_size: u64, block_size: Option<u64>) {
        device.kind = MemoryDeviceKind::VirtioMem {
            requested_size,
            block_size,
            node: None,
            bus: None,
            addr: None,
            virtio: VirtioOpts::default(),
        };
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        let not_power_of_two = (3u64..).prop_filter("a power of two", |n| !n.is_power_of_two());
        Cases::new(arb_device())
            .fault("id", bad_id(), |d, v| d.id = v)
            .fault("id", bad_id(), |d, v| d.backend.id = v)
            .fault("size", Just(0), |d, v| d.backend.size = v)
            .fault("mem_path", bad_path(), |d, v| {
                d.backend.kind = MemoryBackendKind::File {
                    mem_path: v,
                    readonly: false,
                    discard_data: false,
                    pmem: false,
                }
            })
            .fault("mem-path", nul_text(), |d, v| {
                d.backend.kind = MemoryBackendKind::File {
                    mem_path: v.into(),
                    readonly: false,
                    discard_data: false,
                    pmem: false,
                }
            })
            .fault(
                "hugetlbsize",
                (any::<bool>(), 12u32..=30),
                |d, (hugetlb, shift)| {
                    // Not a power of two, or without hugetlb.
                    let page = if hugetlb {
                        (1 << shift) + 1
                    } else {
                        1 << shift
                    };
                    d.backend.kind = MemoryBackendKind::Memfd {
                        hugetlb,
                        hugetlbsize: Some(page),
                        seal: None,
                    };
                    d.backend.size = page * 4;
                },
            )
            .fault("size", (12u32..=30, 1u64..1 << 20), |d, (shift, units)| {
                d.backend.kind = MemoryBackendKind::Memfd {
                    hugetlb: true,
                    hugetlbsize: Some(1 << shift),
                    seal: None,
                };
                d.backend.size = (units << shift) + 1 + units % ((1 << shift) - 1);
            })
            .fault("unarmed", path(), |d, mem_path| {
                d.backend.kind = MemoryBackendKind::File {
                    mem_path,
                    readonly: true,
                    discard_data: false,
                    pmem: false,
                };
                d.kind = MemoryDeviceKind::Nvdimm {
                    unarmed: false,
                    label_size: None,
                };
            })
            .fault("label_size", 0u64..128 << 10, |d, v| {
                d.kind = MemoryDeviceKind::Nvdimm {
                    unarmed: true,
                    label_size: Some(v),
                }
            })
            .fault("slot", i32::MAX as u32 + 1.., |d, v| {
                d.kind = MemoryDeviceKind::PcDimm {
                    slot: Some(v),
                    node: None,
                    addr: None,
                }
            })
            .fault("virtio.transport", transport(), |d, (virtio, _)| {
                virtio_mem(d, 0, None);
                if let MemoryDeviceKind::VirtioMem { virtio: v, .. } = &mut d.kind {
                    *v = VirtioOpts {
                        transport: match virtio.transport {
                            Transport::Pci | Transport::Mmio => Transport::Mmio,
                            Transport::Ccw => Transport::Ccw,
                        },
                        ..virtio
                    };
                }
            })
            .fault("requested_size", 1u64.., |d, extra| {
                d.backend.kind = MemoryBackendKind::Ram;
                d.backend.size = d.backend.size.min(u64::MAX / 2);
                virtio_mem(d, d.backend.size + extra.min(u64::MAX / 2), None);
            })
            .fault("block_size", not_power_of_two, |d, block| {
                virtio_mem(d, 0, Some(block))
            })
            .fault("requested_size", 12u32..=30, |d, shift| {
                d.backend.kind = MemoryBackendKind::Ram;
                d.backend.size = u64::MAX;
                virtio_mem(d, (1 << shift) + 1, Some(1 << shift));
            })
            .fault("bus", bad_id(), |d, bus| {
                virtio_mem(d, 0, None);
                if let MemoryDeviceKind::VirtioMem { bus: b, .. } = &mut d.kind {
                    *b = Some(bus);
                }
            })
            .check();
    }
}
