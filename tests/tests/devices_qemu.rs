//! hvarch-devices against real QEMU 10 (TCG, paused with `-S`, no guest).
//!
//! What this file proves, for `qemu-system-aarch64` (`virt`) and `qemu-system-x86_64` (`q35`):
//!
//! * **Cold plug**: a whole [`VmConfig`] with one device of every class that can run here
//!   (root ports and bridges, virtio-serial ports, legacy serial, virtio-rng, virtio-blk on a
//!   `-blockdev` with an iothread, virtio-scsi with `scsi-hd` and `scsi-cd`, 9p, virtio-net on a
//!   user netdev, virtio-balloon, pvpanic, RAM/memfd/file memory backends with virtio-mem,
//!   pc-dimm and nvdimm frontends, virtio-iommu or intel-iommu, fw_cfg items and a generic
//!   loader) starts, and QEMU reports every id and several properties exactly as configured.
//! * **Escaping**: paths and values holding `,` and `=` reach QEMU unchanged (the block node's
//!   filename, a disk serial, a memory-backend-file path, a socket path, the loader's file).
//! * **JSON syntax**: the same configuration rendered with [`Syntax::Json`] starts and reports
//!   the same ids.
//! * **Hot plug**: the same device definitions sent over QMP (`Part::qmp_add`, in order) appear
//!   in QEMU, and `Part::qmp_del` (in reverse order) removes them again.
//! * **Not vacuous**: configurations QEMU refuses fail at start with QEMU's own message.
//!
//! Not here: vhost-vsock, vhost-user and VFIO need host facilities this machine lacks
//! (`/dev/vhost-vsock`, a backend daemon, assignable devices); vCPU hotplug is covered by the
//! arch crates' tests. KVM is never used.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hvarch_devices::balloon::BalloonDevice;
use hvarch_devices::block::{BlockBackend, BlockDevice, BlockFormat, BlockProtocol};
use hvarch_devices::bridge::{PciBridge, PcieRootPort};
use hvarch_devices::chardev::{CharBackend, CharDevice, Chardev, LegacySerial, SerialController};
use hvarch_devices::config::{Accelerator, Cpu, Global, Machine, Memory, Pflash, VmConfig};
use hvarch_devices::fd::{FdTable, NoFds};
use hvarch_devices::fs9p::{FsBackend, FsDevice, Multidevs};
use hvarch_devices::fw_cfg::{FwCfg, FwCfgContent};
use hvarch_devices::iommu::{IntelIommu, VirtioIommu};
use hvarch_devices::iothread::IoThread;
use hvarch_devices::loader::Loader;
use hvarch_devices::memory::{MemoryBackend, MemoryDevice};
use hvarch_devices::net::{NetBackend, NetDevice};
use hvarch_devices::part::{Part, PartKind, Syntax};
use hvarch_devices::pci::PciAddr;
use hvarch_devices::pvpanic::PvPanic;
use hvarch_devices::rng::RngDevice;
use hvarch_devices::scsi::{ScsiController, ScsiDisk, ScsiDriver};
use hvarch_devices::{Device, QemuDevice};
use hvarch_tests::{QemuProcess, RawQmp, TempDir, QEMU_AARCH64, QEMU_X86_64};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
/// A disk serial holding both characters QEMU's option syntax cares about.
const ODD_SERIAL: &str = "hv,serial=1,,x";
/// The bytes the generic loader puts in guest memory.
const LOADER_BYTES: &[u8] = b"hvarch-loader,=\x00\x01\x02\xff";
const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// The guest architecture of a test VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    Arm64,
    X86,
}

impl Arch {
    fn binary(self) -> &'static str {
        match self {
            Arch::Arm64 => QEMU_AARCH64,
            Arch::X86 => QEMU_X86_64,
        }
    }

    /// A guest-physical address inside boot RAM, away from firmware and the DTB.
    fn loader_addr(self) -> u64 {
        match self {
            // virt's RAM starts at 1 GiB; the DTB sits at its start.
            Arch::Arm64 => 0x4000_0000 + 16 * MIB,
            Arch::X86 => 8 * MIB,
        }
    }
}

/// A paused, headless TCG VM of `arch` with 256 MiB of boot RAM and room for 768 MiB more
/// (2 DIMM slots), and no devices yet.
///
/// On arm64 the UEFI pflash pair is loaded: `virt` creates its ACPI GED (needed by pc-dimm
/// and nvdimm) only when firmware is present. With `-S` the firmware never runs.
fn base_config(arch: Arch, dir: &TempDir) -> VmConfig {
    let mut vm = match arch {
        Arch::Arm64 => {
            let mut machine = Machine::new("virt", Accelerator::Tcg);
            machine
                .options
                .set("gic-version", "3")
                .expect("machine option");
            machine.options.set("nvdimm", "on").expect("machine option");
            let mut vm = VmConfig::new(machine);
            let vars = dir.join("AAVMF_VARS.fd");
            std::fs::copy(AAVMF_VARS, &vars).unwrap_or_else(|e| {
                panic!("copy {AAVMF_VARS}: {e}; run `cargo xtask setup` (qemu-efi-aarch64)")
            });
            vm.pflash = vec![
                Pflash {
                    file: AAVMF_CODE.into(),
                    readonly: true,
                },
                Pflash {
                    file: vars,
                    readonly: false,
                },
            ];
            vm
        }
        Arch::X86 => {
            let mut machine = Machine::new("q35", Accelerator::Tcg);
            machine.options.set("nvdimm", "on").expect("machine option");
            VmConfig::new(machine)
        }
    };
    vm.cpu = Some(Cpu::model("max"));
    let mut memory = Memory::size(256 * MIB);
    memory.slots = Some(2);
    memory.maxmem = Some(1024 * MIB);
    vm.memory = Some(memory);
    vm.knobs.stopped = true;
    vm.knobs.nodefaults = true;
    vm.knobs.no_user_config = true;
    vm.knobs.nographic = true;
    vm
}

/// Creates an empty raw image of `size` bytes (sparse).
fn raw_image(path: &Path, size: u64) -> PathBuf {
    let file = std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.set_len(size).expect("size the image");
    path.to_owned()
}

/// A test path as text (they are all UTF-8).
fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

fn mkdir(path: PathBuf) -> PathBuf {
    std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// Paths of the full configuration that QEMU must open exactly as written.
struct OddPaths {
    /// `<tmp>/dir,with=odd/disk,1=2.img`, the escaped virtio-blk image.
    disk: PathBuf,
    /// A memory-backend-file path with `,` and `=`.
    mem_file: PathBuf,
    /// A virtconsole's listening socket with `,` and `=`.
    console_sock: PathBuf,
}

/// The full cold-plug configuration of `arch`, every file inside `dir`.
fn full_config(arch: Arch, dir: &TempDir) -> (VmConfig, OddPaths) {
    let mut vm = base_config(arch, dir);
    let odd = mkdir(dir.join("dir,with=odd"));
    let paths = OddPaths {
        disk: raw_image(&odd.join("disk,1=2.img"), 4 * MIB),
        mem_file: odd.join("nv,mem=1"),
        console_sock: odd.join("con,1=s.sock"),
    };
    let plain_disk = raw_image(&dir.join("plain.img"), 4 * MIB);
    let scsi_disk = raw_image(&dir.join("scsi.img"), 4 * MIB);
    let share = mkdir(odd.join("share,9p=x"));
    let loader_file = odd.join("blob,1=l.bin");
    std::fs::write(&loader_file, LOADER_BYTES).expect("write the loader blob");
    let fw_cfg_file = odd.join("fw,cfg=1.bin");
    std::fs::write(&fw_cfg_file, b"fw_cfg file contents").expect("write the fw_cfg blob");

    let mut devices: Vec<Device> = Vec::new();

    // PCI topology: four root ports, a PCIe-to-PCI bridge behind one, a PCI bridge behind it.
    for n in 0..4u16 {
        let mut rp = PcieRootPort::new(format!("rp{n}"));
        rp.chassis = 1;
        rp.slot = n;
        devices.push(rp.into());
    }
    devices.push(PciBridge::pcie("ppb0", "rp3").into());
    let mut pci_bridge = PciBridge::pci("pb0", "ppb0", 7);
    pci_bridge.shpc = Some(false);
    // On virt the PCIe-to-PCI bridge's SHPC owns slot 0 of its bus.
    pci_bridge.addr = Some(PciAddr::slot_only(1).expect("slot 1"));
    devices.push(pci_bridge.into());

    devices.push(IoThread::new("io0").into());

    // virtio-blk on a root port with an iothread and a serial holding ',' and '='.
    let mut blk0 = BlockDevice::new(
        "blk0",
        BlockBackend::new(
            "blk0-node",
            BlockProtocol::File {
                filename: plain_disk,
            },
        ),
    );
    blk0.bus = Some("rp0".into());
    blk0.iothread = Some("io0".into());
    blk0.serial = Some(ODD_SERIAL.into());
    blk0.share_rw = true;
    devices.push(blk0.into());

    // virtio-blk on the image whose path holds ',' and '='.
    let mut blk1 = BlockDevice::new(
        "blk1",
        BlockBackend::new(
            "blk1-node",
            BlockProtocol::File {
                filename: paths.disk.clone(),
            },
        ),
    );
    blk1.bus = Some("rp1".into());
    devices.push(blk1.into());

    // virtio-scsi with a disk and a CD-ROM.
    let mut scsi = ScsiController::new("scsi0");
    scsi.iothread = Some("io0".into());
    scsi.num_queues = Some(2);
    devices.push(scsi.into());
    let mut sd0 = ScsiDisk::new(
        "sd0",
        "scsi0.0",
        BlockBackend::new(
            "sd0-node",
            BlockProtocol::File {
                filename: scsi_disk,
            },
        ),
    );
    sd0.scsi_id = Some(0);
    sd0.lun = Some(3);
    sd0.serial = Some("sd,0=x".into());
    devices.push(sd0.into());
    let mut cd0 = ScsiDisk::new(
        "cd0",
        "scsi0.0",
        BlockBackend::new("cd0-node", BlockProtocol::NullCo { size: MIB }),
    );
    cd0.driver = ScsiDriver::ScsiCd;
    cd0.scsi_id = Some(1);
    cd0.lun = Some(0);
    devices.push(cd0.into());

    // virtio-serial with a console and a named port on listening sockets.
    let mut vser = SerialController::new("vser0");
    vser.max_ports = Some(4);
    devices.push(vser.into());
    let mut console = CharDevice::console(
        "con0",
        Chardev::new(
            "con0-chr",
            CharBackend::server_socket(paths.console_sock.clone()),
        ),
    );
    console.bus = Some("vser0.0".into());
    devices.push(console.into());
    let mut port = CharDevice::new(
        "port0",
        Chardev::new(
            "port0-chr",
            CharBackend::server_socket(dir.join("port0.sock")),
        ),
    );
    port.bus = Some("vser0.0".into());
    port.name = Some("org.hvarch.port,0".into());
    devices.push(port.into());

    // A legacy serial port (PL011 on virt, 16550 on q35).
    devices.push(
        LegacySerial::new(Chardev::new(
            "ser0-chr",
            CharBackend::server_socket(dir.join("ser0.sock")),
        ))
        .into(),
    );

    let mut rng = RngDevice::new("rng0", "rng0-obj");
    rng.filename = Some("/dev/urandom".into());
    rng.period = Some(1000);
    rng.max_bytes = Some(4096);
    devices.push(rng.into());

    let mut share9p = FsDevice::new("fs0", FsBackend::new("fs0-dev", share), "hvshare");
    share9p.backend.multidevs = Some(Multidevs::Remap);
    devices.push(share9p.into());

    let mut net = NetDevice::new("net0", "net0-dev", NetBackend::User {});
    net.mac = Some("52:54:00:12:34:56".into());
    net.bus = Some("rp2".into());
    devices.push(net.into());

    // The balloon sits behind the PCI bridge, proving the bridge's bus is usable.
    let mut balloon = BalloonDevice::new("balloon0");
    balloon.deflate_on_oom = true;
    balloon.bus = Some("pb0".into());
    devices.push(balloon.into());

    let mut pvpanic = match arch {
        Arch::Arm64 => PvPanic::pci(),
        Arch::X86 => PvPanic::isa(),
    };
    pvpanic.id = Some("panic0".into());
    pvpanic.events = Some(PvPanic::PANICKED | PvPanic::SHUTDOWN);
    devices.push(pvpanic.into());

    // Memory: virtio-mem on RAM, a DIMM on memfd, an NVDIMM on a file.
    devices.push(
        MemoryDevice::virtio_mem(
            "vmem0",
            MemoryBackend::ram("vmem0-mem", 128 * MIB),
            64 * MIB,
        )
        .into(),
    );
    devices
        .push(MemoryDevice::pc_dimm("dimm0", MemoryBackend::memfd("dimm0-mem", 64 * MIB)).into());
    devices.push(
        MemoryDevice::nvdimm(
            "nv0",
            MemoryBackend::file("nv0-mem", 64 * MIB, paths.mem_file.clone()),
        )
        .into(),
    );

    match arch {
        Arch::Arm64 => {
            let mut iommu = VirtioIommu::new();
            iommu.id = Some("iommu0".into());
            devices.push(iommu.into());
        }
        Arch::X86 => {
            let mut iommu = IntelIommu::new();
            iommu.id = Some("iommu0".into());
            devices.push(iommu.into());
        }
    }

    devices.push(
        FwCfg::new(
            "opt/org.hvarch/string",
            FwCfgContent::String("a,b=c".into()),
        )
        .into(),
    );
    devices.push(FwCfg::new("opt/org.hvarch/file", FwCfgContent::File(fw_cfg_file)).into());

    let mut loader = Loader::new("loader0", loader_file);
    loader.addr = Some(arch.loader_addr());
    loader.force_raw = true;
    devices.push(loader.into());

    vm.devices = devices;
    (vm, paths)
}

/// Renders `vm` in `syntax` (no descriptors expected).
fn render(vm: &VmConfig, syntax: Syntax) -> Vec<String> {
    let mut fds = FdTable::new();
    let args = vm
        .to_args(syntax, &mut fds)
        .unwrap_or_else(|e| panic!("render {syntax:?}: {e}"));
    assert!(fds.is_empty(), "no descriptors expected");
    args
}

/// Starts `vm` rendered in `syntax`, inside `dir`.
fn start(arch: Arch, vm: &VmConfig, syntax: Syntax, dir: TempDir) -> QemuProcess {
    QemuProcess::spawn_in(dir, arch.binary(), &render(vm, syntax))
}

/// Runs `f`; if it panics (a failed check, or QEMU closing the socket), prints what QEMU
/// wrote to stderr before passing the panic on.
fn with_stderr<T>(qemu: &QemuProcess, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(panic) => {
            eprintln!("QEMU (pid {}) stderr:\n{}", qemu.pid(), qemu.stderr());
            std::panic::resume_unwind(panic)
        }
    }
}

/// Every part of every device, in creation order.
fn parts_of(devices: &[Device]) -> Vec<Part<'_>> {
    devices
        .iter()
        .flat_map(|d| d.parts().unwrap_or_else(|e| panic!("{}: {e}", d.kind())))
        .collect()
}

fn ids_of(parts: &[Part], kind: PartKind) -> Vec<String> {
    parts
        .iter()
        .filter(|p| p.kind() == kind)
        .filter_map(|p| p.id().map(str::to_owned))
        .collect()
}

fn object_ids(qmp: &mut RawQmp) -> Vec<String> {
    let list = qmp.ok("qom-list", json!({ "path": "/objects" }));
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"].as_str().is_some_and(|t| t.starts_with("child<")))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

fn chardev_labels(qmp: &mut RawQmp) -> Vec<String> {
    let list = qmp.ok("query-chardev", json!({}));
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["label"].as_str().map(str::to_owned))
        .collect()
}

/// The `query-named-block-nodes` entry of `node`.
fn block_node(qmp: &mut RawQmp, node: &str) -> Value {
    let nodes = qmp.ok("query-named-block-nodes", json!({}));
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["node-name"] == node)
        .cloned()
        .unwrap_or_else(|| panic!("block node {node} not in query-named-block-nodes: {nodes}"))
}

/// Checks that device `id` sits on bus `bus` (a bridge's or root port's bus has its id).
fn assert_on_bus(qmp: &mut RawQmp, id: &str, bus: &str) {
    let parent = qmp.qom_get(&peripheral(id), "parent_bus");
    assert!(
        parent
            .as_str()
            .is_some_and(|p| p.ends_with(&format!("/{bus}"))),
        "{id} is on {parent}, not on {bus}"
    );
}

fn peripheral(id: &str) -> String {
    format!("/machine/peripheral/{id}")
}

/// What QEMU must report for `parts`: each part's id in the namespace QEMU keeps it in.
/// Returns the peripheral (device) ids.
fn assert_parts_present(qmp: &mut RawQmp, parts: &[Part], pci_ids: &[&str]) -> Vec<String> {
    let peripherals = qmp.peripheral_ids();
    let devices = ids_of(parts, PartKind::Device);
    for id in &devices {
        assert!(
            peripherals.contains(id),
            "device {id} missing from /machine/peripheral: {peripherals:?}"
        );
    }
    let pci = qmp.pci_device_ids();
    for id in pci_ids {
        assert!(
            pci.iter().any(|p| p == id),
            "{id} missing from query-pci: {pci:?}"
        );
    }
    let nodes = qmp.block_node_names();
    for node in ids_of(parts, PartKind::Blockdev) {
        assert!(
            nodes.contains(&node),
            "block node {node} missing: {nodes:?}"
        );
    }
    let objects = object_ids(qmp);
    for id in ids_of(parts, PartKind::Object) {
        assert!(objects.contains(&id), "object {id} missing: {objects:?}");
    }
    let chardevs = chardev_labels(qmp);
    for id in ids_of(parts, PartKind::Chardev) {
        assert!(chardevs.contains(&id), "chardev {id} missing: {chardevs:?}");
    }
    let network = qmp.hmp("info network");
    for id in ids_of(parts, PartKind::Netdev) {
        assert!(
            network.contains(&id),
            "netdev {id} missing from info network:\n{network}"
        );
    }
    devices
}

/// The checks shared by both syntaxes: ids, properties, escaped paths.
fn check_full(arch: Arch, qmp: &mut RawQmp, vm: &VmConfig, paths: &OddPaths, dir: &Path) {
    let parts = parts_of(&vm.devices);
    // query-pci lists devices behind a bridge only once firmware numbered its secondary bus,
    // which never happens under -S: only root-bus devices are listed there. The others are
    // checked through their parent bus below.
    let mut pci_ids = vec![
        "rp0", "rp1", "rp2", "rp3", "scsi0", "vser0", "rng0", "fs0", "vmem0",
    ];
    if arch == Arch::Arm64 {
        pci_ids.extend(["panic0", "iommu0"]);
    }
    let mut devices = assert_parts_present(qmp, &parts, &pci_ids);
    devices.sort();
    let mut expected = vec![
        "rp0", "rp1", "rp2", "rp3", "ppb0", "pb0", "blk0", "blk1", "scsi0", "sd0", "cd0", "vser0",
        "con0", "port0", "rng0", "fs0", "net0", "balloon0", "panic0", "vmem0", "dimm0", "nv0",
        "iommu0", "loader0",
    ];
    expected.sort_unstable();
    assert_eq!(devices, expected, "one device of every class");

    for (id, bus) in [
        ("blk0", "rp0"),
        ("blk1", "rp1"),
        ("net0", "rp2"),
        ("ppb0", "rp3"),
        ("pb0", "ppb0"),
        ("balloon0", "pb0"),
        ("sd0", "scsi0.0"),
        ("cd0", "scsi0.0"),
        ("con0", "vser0.0"),
        ("port0", "vser0.0"),
    ] {
        assert_on_bus(qmp, id, bus);
    }

    // Properties QEMU reports.
    assert_eq!(qmp.qom_get(&peripheral("blk0"), "serial"), ODD_SERIAL);
    assert_eq!(qmp.qom_get(&peripheral("blk0"), "share-rw"), true);
    let iothread = qmp.qom_get(&peripheral("blk0"), "iothread");
    assert!(
        iothread.as_str().is_some_and(|p| p.ends_with("io0")),
        "blk0 iothread: {iothread}"
    );
    let iothread = qmp.qom_get(&peripheral("scsi0"), "iothread");
    assert!(
        iothread.as_str().is_some_and(|p| p.ends_with("io0")),
        "scsi0 iothread: {iothread}"
    );
    assert_eq!(qmp.qom_get(&peripheral("scsi0"), "num_queues"), 2);
    assert_eq!(qmp.qom_get(&peripheral("sd0"), "serial"), "sd,0=x");
    assert_eq!(qmp.qom_get(&peripheral("sd0"), "scsi-id"), 0);
    assert_eq!(qmp.qom_get(&peripheral("sd0"), "lun"), 3);
    assert_eq!(qmp.qom_get(&peripheral("cd0"), "scsi-id"), 1);
    for n in 0..4u64 {
        let rp = peripheral(&format!("rp{n}"));
        assert_eq!(qmp.qom_get(&rp, "chassis"), 1);
        assert_eq!(qmp.qom_get(&rp, "slot"), n);
    }
    assert_eq!(qmp.qom_get(&peripheral("pb0"), "chassis_nr"), 7);
    assert_eq!(qmp.qom_get(&peripheral("pb0"), "shpc"), false);
    assert_eq!(qmp.qom_get(&peripheral("vser0"), "max_ports"), 4);
    assert_eq!(
        qmp.qom_get(&peripheral("port0"), "name"),
        "org.hvarch.port,0"
    );
    assert_eq!(qmp.qom_get(&peripheral("port0"), "chardev"), "port0-chr");
    assert_eq!(qmp.qom_get(&peripheral("con0"), "chardev"), "con0-chr");
    assert_eq!(qmp.qom_get(&peripheral("fs0"), "mount_tag"), "hvshare");
    assert_eq!(qmp.qom_get(&peripheral("fs0"), "fsdev"), "fs0-dev");
    assert_eq!(qmp.qom_get(&peripheral("net0"), "mac"), "52:54:00:12:34:56");
    assert_eq!(qmp.qom_get(&peripheral("net0"), "netdev"), "net0-dev");
    let rng = qmp.qom_get(&peripheral("rng0"), "rng");
    assert!(
        rng.as_str().is_some_and(|p| p.ends_with("rng0-obj")),
        "rng0 rng: {rng}"
    );
    assert_eq!(qmp.qom_get(&peripheral("rng0"), "period"), 1000);
    assert_eq!(qmp.qom_get(&peripheral("rng0"), "max-bytes"), 4096);
    assert_eq!(qmp.qom_get("/objects/rng0-obj", "filename"), "/dev/urandom");
    assert_eq!(qmp.qom_get(&peripheral("balloon0"), "deflate-on-oom"), true);
    assert_eq!(qmp.qom_get(&peripheral("panic0"), "events"), 5);
    assert_eq!(
        qmp.qom_get(&peripheral("vmem0"), "requested-size"),
        64 * MIB
    );
    assert_eq!(
        qmp.qom_get(&peripheral("vmem0"), "memdev"),
        "/objects/vmem0-mem"
    );
    assert_eq!(qmp.qom_get("/objects/vmem0-mem", "size"), 128 * MIB);
    assert_eq!(qmp.qom_get("/objects/dimm0-mem", "size"), 64 * MIB);
    assert_eq!(
        qmp.qom_get("/objects/nv0-mem", "mem-path"),
        text(&paths.mem_file)
    );

    if arch == Arch::X86 {
        let iommu = peripheral("iommu0");
        assert_eq!(qmp.qom_get(&iommu, "intremap"), "on");
        assert_eq!(qmp.qom_get(&iommu, "device-iotlb"), true);
        assert_eq!(qmp.qom_get(&iommu, "caching-mode"), true);
    }

    // Escaping: the image whose path holds ',' and '=' is open under exactly that name.
    let disk = text(&paths.disk);
    let node = block_node(qmp, "blk1-node");
    assert_eq!(node["file"], disk, "blk1-node: {node}");
    assert_eq!(node["image"]["filename"], disk, "blk1-node: {node}");
    let blocks = qmp.ok("query-block", json!({}));
    let blk1 = blocks
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| {
            b["qdev"]
                .as_str()
                .is_some_and(|q| q.starts_with(&peripheral("blk1")))
        })
        .unwrap_or_else(|| panic!("blk1 not in query-block: {blocks}"));
    assert_eq!(blk1["inserted"]["file"], disk);
    assert_eq!(blk1["inserted"]["node-name"], "blk1-node");
    // The console's socket exists at its odd path; the loader put its odd-path file in RAM.
    assert!(
        paths.console_sock.exists(),
        "no socket at {}",
        paths.console_sock.display()
    );
    let dump = dir.join("loader.dump");
    qmp.ok(
        "pmemsave",
        json!({
            "val": arch.loader_addr(),
            "size": LOADER_BYTES.len(),
            "filename": text(&dump),
        }),
    );
    assert_eq!(
        std::fs::read(&dump).expect("read the pmemsave dump"),
        LOADER_BYTES
    );
}

/// What a running VM reports, for comparing two launches of one configuration.
#[derive(Debug, PartialEq)]
struct Inventory {
    peripherals: Vec<String>,
    pci: Vec<String>,
    named_nodes: Vec<String>,
    objects: Vec<String>,
    chardevs: Vec<String>,
}

fn inventory(qmp: &mut RawQmp) -> Inventory {
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    Inventory {
        peripherals: sorted(qmp.peripheral_ids()),
        pci: sorted(qmp.pci_device_ids()),
        // Nodes QEMU names itself ("#block123") differ between runs.
        named_nodes: sorted(
            qmp.block_node_names()
                .into_iter()
                .filter(|n| !n.starts_with('#'))
                .collect(),
        ),
        objects: sorted(object_ids(qmp)),
        chardevs: sorted(chardev_labels(qmp)),
    }
}

/// Starts the full configuration of `arch` in both syntaxes, checks each, and compares them.
fn cold_plug_every_class(arch: Arch) {
    let mut seen: Vec<Inventory> = Vec::new();
    for syntax in [Syntax::Options, Syntax::Json] {
        let dir = TempDir::new();
        let (vm, paths) = full_config(arch, &dir);
        let args = render(&vm, syntax);
        let json_args = args.iter().filter(|a| a.starts_with('{')).count();
        match syntax {
            Syntax::Options => assert_eq!(json_args, 0, "{args:?}"),
            // Every -device, -blockdev, -netdev and -object is JSON.
            Syntax::Json => assert!(json_args >= 30, "only {json_args} JSON arguments: {args:?}"),
        }
        let qemu = QemuProcess::spawn_in(dir, arch.binary(), &args);
        seen.push(with_stderr(&qemu, || {
            let mut qmp = qemu.raw_qmp();
            check_full(arch, &mut qmp, &vm, &paths, qemu.dir().path());
            let status = qmp.ok("query-status", json!({}));
            assert_eq!(status["status"], "prelaunch", "{syntax:?}: {status}");
            inventory(&mut qmp)
        }));
    }
    assert_eq!(seen[0], seen[1], "option and JSON syntax give the same VM");
}

#[test]
fn arm64_virt_cold_plugs_every_device_class_in_both_syntaxes() {
    cold_plug_every_class(Arch::Arm64);
}

#[test]
fn x86_64_q35_cold_plugs_every_device_class_in_both_syntaxes() {
    cold_plug_every_class(Arch::X86);
}

/// Polls until QEMU has sent `DEVICE_DELETED` for `id` and the device left the peripheral
/// container (bounded: a device hot-plugged into a guest-less VM goes at once).
fn wait_device_deleted(qmp: &mut RawQmp, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let event = qmp
            .events()
            .iter()
            .any(|e| e["event"] == "DEVICE_DELETED" && e["data"]["device"] == id);
        if event && !qmp.peripheral_ids().iter().any(|p| p == id) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no DEVICE_DELETED for {id} within 10 s; events: {:?}",
            qmp.events()
        );
        std::thread::sleep(Duration::from_millis(10));
        qmp.ok("query-status", json!({}));
    }
}

/// Cold-plugs only the topology (root ports, a bridge pair, virtio-serial and virtio-scsi
/// controllers), then hot-plugs device definitions through their QMP rendering, checks them,
/// and removes them again in reverse order.
fn hotplug_and_unplug(arch: Arch) {
    let dir = TempDir::new();
    let mut vm = base_config(arch, &dir);
    let mut cold: Vec<Device> = Vec::new();
    for n in 0..5u16 {
        let mut rp = PcieRootPort::new(format!("rp{n}"));
        rp.chassis = 1;
        rp.slot = n;
        cold.push(rp.into());
    }
    cold.push(PciBridge::pcie("ppb0", "rp4").into());
    let mut pci_bridge = PciBridge::pci("pb0", "ppb0", 9);
    pci_bridge.addr = Some(PciAddr::slot_only(1).expect("slot 1"));
    cold.push(pci_bridge.into());
    cold.push(SerialController::new("vser0").into());
    cold.push(ScsiController::new("scsi0").into());
    vm.devices = cold.clone();
    if arch == Arch::X86 {
        // q35 hot-plugs into root ports through ACPI by default, and an ACPI unplug waits for
        // a guest to eject the device. Native PCIe hotplug releases a device that a guest
        // never saw at once, as on arm64.
        vm.globals.push(Global {
            driver: "ICH9-LPC".into(),
            property: "acpi-pci-hotplug-with-bridge-support".into(),
            value: "off".into(),
        });
    }

    let odd = mkdir(dir.join("hot,dir=1"));
    let mut hot: Vec<Device> = Vec::new();
    hot.push(IoThread::new("hp-io0").into());
    let mut blk = BlockDevice::new(
        "hp-blk0",
        BlockBackend::new(
            "hp-blk0-node",
            BlockProtocol::File {
                filename: raw_image(&odd.join("hot,1=2.img"), 4 * MIB),
            },
        ),
    );
    blk.bus = Some("rp0".into());
    blk.iothread = Some("hp-io0".into());
    blk.serial = Some(ODD_SERIAL.into());
    hot.push(blk.into());
    let mut qcow = BlockBackend::new("hp-sd0-node", BlockProtocol::NullCo { size: 8 * MIB });
    qcow.format = BlockFormat::None;
    let mut sd = ScsiDisk::new("hp-sd0", "scsi0.0", qcow);
    sd.lun = Some(2);
    sd.serial = Some("hp,sd=0".into());
    hot.push(sd.into());
    let mut port = CharDevice::new(
        "hp-port0",
        Chardev::new(
            "hp-port0-chr",
            CharBackend::server_socket(odd.join("port,0=s.sock")),
        ),
    );
    port.bus = Some("vser0.0".into());
    port.name = Some("org.hvarch.hot.0".into());
    hot.push(port.into());
    let mut net = NetDevice::new("hp-net0", "hp-net0-dev", NetBackend::User {});
    net.mac = Some("52:54:00:ab:cd:ef".into());
    net.bus = Some("rp1".into());
    hot.push(net.into());
    let mut vmem = MemoryDevice::virtio_mem(
        "hp-vmem0",
        MemoryBackend::ram("hp-vmem0-mem", 128 * MIB),
        32 * MIB,
    );
    if let hvarch_devices::memory::MemoryDeviceKind::VirtioMem { bus, .. } = &mut vmem.kind {
        *bus = Some("rp2".into());
    }
    hot.push(vmem.into());
    let mut rng = RngDevice::new("hp-rng0", "hp-rng0-obj");
    rng.bus = Some("rp3".into());
    hot.push(rng.into());

    let qemu = start(arch, &vm, Syntax::Options, dir);
    with_stderr(&qemu, || hotplug_checks(&qemu, &cold, &hot, &odd));
}

fn hotplug_checks(qemu: &QemuProcess, cold: &[Device], hot: &[Device], odd: &Path) {
    let mut qmp = qemu.raw_qmp();
    let cold_parts = parts_of(cold);
    assert_parts_present(&mut qmp, &cold_parts, &["rp0", "rp4", "vser0", "scsi0"]);
    assert_on_bus(&mut qmp, "pb0", "ppb0");
    let before = inventory(&mut qmp);

    // Hot plug: every part's QMP command, in creation order.
    let hot_parts = parts_of(hot);
    for part in &hot_parts {
        let call = part
            .qmp_add(&mut NoFds)
            .unwrap_or_else(|e| panic!("qmp_add {part:?}: {e}"));
        if let Err(e) = qmp.execute(call.command, call.arguments.clone()) {
            panic!(
                "{} {} refused by QEMU: {e}\n{}",
                call.command,
                call.arguments,
                qemu.stderr()
            );
        }
    }
    assert_parts_present(&mut qmp, &hot_parts, &[]);
    assert_eq!(qmp.qom_get(&peripheral("hp-blk0"), "serial"), ODD_SERIAL);
    let iothread = qmp.qom_get(&peripheral("hp-blk0"), "iothread");
    assert!(
        iothread.as_str().is_some_and(|p| p.ends_with("hp-io0")),
        "{iothread}"
    );
    let image = odd.join("hot,1=2.img");
    assert_eq!(block_node(&mut qmp, "hp-blk0-node")["file"], text(&image));
    assert_eq!(qmp.qom_get(&peripheral("hp-sd0"), "serial"), "hp,sd=0");
    assert_eq!(qmp.qom_get(&peripheral("hp-sd0"), "lun"), 2);
    assert_eq!(
        qmp.qom_get(&peripheral("hp-port0"), "name"),
        "org.hvarch.hot.0"
    );
    assert!(odd.join("port,0=s.sock").exists());
    assert_eq!(
        qmp.qom_get(&peripheral("hp-net0"), "mac"),
        "52:54:00:ab:cd:ef"
    );
    assert_eq!(
        qmp.qom_get(&peripheral("hp-vmem0"), "requested-size"),
        32 * MIB
    );
    // The hot-plugged devices sit on the buses they name.
    for (id, bus) in [
        ("hp-blk0", "rp0"),
        ("hp-net0", "rp1"),
        ("hp-vmem0", "rp2"),
        ("hp-rng0", "rp3"),
        ("hp-sd0", "scsi0.0"),
        ("hp-port0", "vser0.0"),
    ] {
        assert_on_bus(&mut qmp, id, bus);
    }

    // virtio-mem refuses unplug while it still asks the guest for memory: shrink first.
    qmp.ok(
        "qom-set",
        json!({ "path": peripheral("hp-vmem0"), "property": "requested-size", "value": 0 }),
    );

    // Hot unplug: in reverse, waiting for each frontend to go before its backend.
    for part in hot_parts.iter().rev() {
        let call = part
            .qmp_del()
            .unwrap_or_else(|| panic!("no qmp_del for {part:?}"));
        if let Err(e) = qmp.execute(call.command, call.arguments.clone()) {
            panic!("{} {} refused by QEMU: {e}", call.command, call.arguments);
        }
        if part.kind() == PartKind::Device {
            wait_device_deleted(&mut qmp, part.id().expect("devices here have ids"));
        }
    }
    assert_eq!(
        inventory(&mut qmp),
        before,
        "unplug leaves the cold-plugged VM"
    );
    let network = qmp.hmp("info network");
    assert!(!network.contains("hp-net0"), "netdev left:\n{network}");
}

#[test]
fn arm64_virt_hotplugs_and_unplugs_over_qmp() {
    hotplug_and_unplug(Arch::Arm64);
}

#[test]
fn x86_64_q35_hotplugs_and_unplugs_over_qmp() {
    hotplug_and_unplug(Arch::X86);
}

/// Starts `vm` expecting QEMU to refuse it; returns QEMU's message.
fn refused(arch: Arch, vm: &VmConfig) -> String {
    QemuProcess::expect_start_failure(arch.binary(), &render(vm, Syntax::Options))
}

#[test]
fn qemu_refuses_what_it_should_with_its_own_message() {
    let dir = TempDir::new();
    let arch = Arch::X86;

    // A disk whose image is missing: QEMU names the exact (unescaped) path.
    let missing = dir.join("no,such=disk.img");
    let mut vm = base_config(arch, &dir);
    vm.devices = vec![BlockDevice::new(
        "blk0",
        BlockBackend::new(
            "blk0-node",
            BlockProtocol::File {
                filename: missing.clone(),
            },
        ),
    )
    .into()];
    let message = refused(arch, &vm);
    assert!(
        message.contains(&format!("Could not open '{}'", missing.display())),
        "{message}"
    );

    // A disk naming an iothread that does not exist.
    let mut blk = BlockDevice::new(
        "blk0",
        BlockBackend::new("blk0-node", BlockProtocol::NullCo { size: MIB }),
    );
    blk.iothread = Some("no-such-iothread".into());
    vm.devices = vec![blk.into()];
    let message = refused(arch, &vm);
    assert!(
        message.contains("Device 'no-such-iothread' not found"),
        "{message}"
    );

    // A fw_cfg item whose file is missing: QEMU reads the (unescaped) path at start.
    let missing = dir.join("no,such=blob");
    vm.devices = vec![FwCfg::new("opt/org.hvarch/x", FwCfgContent::File(missing.clone())).into()];
    let message = refused(arch, &vm);
    assert!(message.contains(text(&missing)), "{message}");

    // Two root ports left at the default chassis 0 / slot 0 collide. hvarch refuses the
    // configuration itself; rendered past that check, QEMU refuses it too, so the check
    // matches QEMU's rule.
    vm.devices = vec![
        PcieRootPort::new("rp0").into(),
        PcieRootPort::new("rp1").into(),
    ];
    let ours = vm.validate().unwrap_err().to_string();
    assert!(
        ours.contains("chassis/slot pair used by another root port"),
        "{ours}"
    );
    let mut unchecked = vm.clone();
    let colliding = std::mem::take(&mut unchecked.devices);
    let mut argv = render(&unchecked, Syntax::Options);
    for device in &colliding {
        for part in device.parts().unwrap() {
            argv.extend(part.to_args(Syntax::Options, &mut FdTable::new()).unwrap());
        }
    }
    let message = QemuProcess::expect_start_failure(arch.binary(), &argv);
    assert!(message.contains("Can't add chassis slot"), "{message}");

    // The same shapes that QEMU accepts start (so the failures above are the values at fault).
    let mut ok = PcieRootPort::new("rp1");
    ok.chassis = 1;
    vm.devices = vec![PcieRootPort::new("rp0").into(), ok.into()];
    let qemu = start(arch, &vm, Syntax::Options, TempDir::new());
    let mut qmp = qemu.raw_qmp();
    let mut ids = qmp.peripheral_ids();
    ids.sort();
    assert_eq!(ids, ["rp0", "rp1"]);
}
