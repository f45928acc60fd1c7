//! Kata's hotplug flows against real QEMU under TCG, on paused (`-S`) VMs launched with
//! `hvarch::Vm::launch` from assembled specs (the arm64 and q35 flows also with
//! `hvarch::AsyncVm`, each with and without QMP `oob`):
//!
//! - arm64 `virt` with PCIe root ports: virtio-blk and virtio-net hot-plugged and unplugged,
//!   seen in `/machine/peripheral` on their root port's bus (whose slot `query-pci` gives the
//!   PCI path); vCPU hotplug refused with the typed error;
//! - a step QEMU refuses midway (a `device_add` on a missing bus or with a missing ROM) leaves
//!   no blockdev, netdev, chardev or root port behind;
//! - x86_64 `q35`: vCPU hotplug, DIMM hotplug;
//! - arm64 with UEFI (AAVMF pflash): DIMM hotplug;
//! - ppc64le `pseries`: virtio-blk and virtio-net on the PCI bridge's slots (path `02/01`,
//!   `02/02`) and back, a vCPU core hot-added;
//! - s390x `s390-ccw-virtio`: virtio-blk and virtio-net on the CCW transport, each numbered
//!   from the CCW bridge (QEMU reports `devno` `fe.0.0004`, `fe.0.0005`) and back, the freed
//!   number reused, a vCPU hot-added, memory hotplug refused;
//! - 200 hotplug/unplug cycles of a virtio-blk with this process's open descriptors unchanged;
//! - the root ports' slots hvarch computes from the configuration (so a hot-plug on a root
//!   port asks no `query-pci`) are QEMU's, on arm64 `virt` and x86_64 `q35`, for several
//!   device mixes;
//! - a rollback QEMU does not confirm leaks nothing for good, with a real arm64 guest (Linux's
//!   pciehp, which waits 5 s before it releases a device): a drive whose `device_add` reply is
//!   lost is undone, the VM is paused before the guest answers, and the device stays a pending
//!   removal (slot and block node kept, the same drive refused with a clear error instead of
//!   QEMU's "Duplicate nodes"); once the VM runs again the guest releases the device, the next
//!   call completes the removal and the same drive is added again.
//!
//! What completes a pending unplug on QEMU 10.0.2 (arm64 `virt`, root port), as measured for
//! these tests: the guest powering the slot off (Linux does 5 s after the attention button).
//! A device hot-plugged into a VM whose guest never ran sits in an unpowered slot and is
//! released at once; after a `system_reset` its slot is powered and nothing releases it
//! without a guest. A second `device_del` within 5 s of guest time is refused ("already in
//! the process of unplug"). `system_reset` does not complete a pending unplug: the rebooted
//! guest finds the device present and keeps it.
//!
//! The guest test needs the test guest (`cargo xtask setup`; `HVARCH_GUEST_DIR`).
//!
//! The arm64 and `q35` flows above run twice, with QMP's `oob` capability negotiated (the
//! default) and without it (`Config::enable_oob = false`): they must behave the same.
//!
//! The tests of this file run one at a time (a lock): the descriptor count is process-wide.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hvarch::engine::{Blocking, Outcome, Step, SyncDriver};
use hvarch::hotplug::{HotplugError, Placement, Plugged};
use hvarch::hvarch_arch::resources::BlockDrive;
use hvarch::hvarch_arch::settings::BlockDriver;
use hvarch::hvarch_devices::chardev::{CharBackend, CharDevice, Chardev};
use hvarch::hvarch_devices::net::{NetBackend, NetDevice};
use hvarch::hvarch_devices::pci::PciAddr;
use hvarch::hvarch_devices::rng::RngDevice;
use hvarch::hvarch_devices::transport::{Transport, VirtioOpts};
use hvarch::{assemble, GuestArch, LaunchOptions, Vm, VmSpec};
use hvarch_tests::drivers::QmpVm;
use hvarch_tests::guest::{self, Console, GuestOptions};
use hvarch_tests::query::{vm_block_nodes, vm_parent_bus, vm_peripherals, vm_qmp};
use hvarch_tests::spec::{runnable, AAVMF_CODE, AAVMF_VARS};
use hvarch_tests::TempDir;
use serde_json::json;

static SERIAL: Mutex<()> = Mutex::new(());

const UNPLUG: Duration = Duration::from_secs(5);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn spec(arch: GuestArch, root_ports: u32) -> VmSpec {
    let mut spec = VmSpec::kata_default();
    spec.id = format!("hotplug-{arch}");
    spec.arch = Some(arch);
    spec.host_memory_mb = Some(4096);
    spec.host_cpus = Some(4);
    spec.hypervisor.memory_mb = 256;
    spec.hypervisor.pcie_root_ports = root_ports;
    if arch == GuestArch::X86_64 {
        spec.hypervisor.machine_type = Some("q35".into());
    }
    spec
}

fn launch(spec: VmSpec, dir: &TempDir) -> Vm {
    launch_oob(spec, dir, true, Vm::launch)
}

/// Launches with `launch` (`Vm::launch`, or a `finish`ed `AsyncVm::launch`) with QMP's `oob`
/// capability negotiated (the default) or not: the hotplug flows must behave the same either
/// way.
fn launch_oob<V: QmpVm>(
    mut spec: VmSpec,
    dir: &TempDir,
    oob: bool,
    launch: impl FnOnce(hvarch::Assembled, LaunchOptions) -> hvarch::VmResult<V>,
) -> V {
    runnable(&mut spec, dir);
    let assembled = assemble(&spec).expect("assemble");
    let mut options = LaunchOptions::default();
    options.qmp.enable_oob = oob;
    let vm = launch(assembled, options).expect("launch");
    let (offered, negotiated) = vm.oob();
    assert!(offered, "QEMU offers oob");
    assert_eq!(negotiated, oob, "oob negotiated exactly when asked for");
    vm
}

fn image(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; 1 << 20]).expect("write image");
    path
}

fn drive(file: PathBuf, id: &str) -> BlockDrive {
    BlockDrive {
        file,
        format: "raw".into(),
        id: id.into(),
        read_only: false,
        share_rw: false,
        index: 0,
    }
}

fn port_slot(vm: &impl QmpVm, port: &str) -> u64 {
    let reply = vm_qmp(vm, "query-pci", json!({}));
    reply[0]["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["qdev_id"] == port)
        .and_then(|d| d["slot"].as_u64())
        .unwrap_or_else(|| panic!("{port} not in query-pci"))
}

fn chardevs(vm: &impl QmpVm) -> Vec<String> {
    vm_qmp(vm, "query-chardev", json!({}))
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["label"].as_str().map(str::to_owned))
        .collect()
}

fn network_info(vm: &impl QmpVm) -> String {
    vm_qmp(
        vm,
        "human-monitor-command",
        json!({"command-line": "info network"}),
    )
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

/// A virtio-net NIC on QEMU's user-mode stack (no host setup), without option ROM.
fn user_nic(id: &str, netdev: &str) -> NetDevice {
    let mut nic = NetDevice::new(id, netdev, NetBackend::User {});
    nic.mac = Some("52:54:00:12:34:56".into());
    nic.virtio.romfile = Some(String::new());
    nic
}

hvarch_tests::two_drivers! {
    /// Hot-plugs `drive0` (a fresh 1 MiB image in `dir`) as the backend's virtio-blk
    /// (`virtio-drive0`), wherever [`Placement::Auto`] puts it.
    pub(crate) fn plug_drive0(vm: &mut TestVm, dir: &TempDir) -> Plugged {
        finish(vm.hotplug().add_block(
                &drive(image(dir, "disk0.img"), "drive0"),
                BlockDriver::VirtioBlk,
                Placement::Auto,
            ))
            .expect("hot-plug virtio-blk")
    }

    /// Unplugs the disk `virtio-drive0` (node `drive0`) and the NIC `net0` (netdev `hostnet0`),
    /// and checks that QEMU has neither any more.
    pub(crate) fn unplug_disk_and_nic(vm: &mut TestVm) {
        finish(vm.hotplug().unplug("virtio-drive0", UNPLUG))
            .expect("unplug disk");
        finish(vm.hotplug().unplug("net0", UNPLUG)).expect("unplug nic");
        let ids = vm_peripherals(vm);
        assert!(!ids.contains(&"virtio-drive0".to_owned()), "{ids:?}");
        assert!(!ids.contains(&"net0".to_owned()), "{ids:?}");
        assert!(!vm_block_nodes(vm).contains(&"drive0".to_owned()));
        assert!(!network_info(vm).contains("hostnet0"));
    }

    #[test]
    fn arm64_block_and_network_through_root_ports_with_oob() {
        arm64_block_and_network_through_root_ports(true);
    }

    #[test]
    fn arm64_block_and_network_through_root_ports_without_oob() {
        arm64_block_and_network_through_root_ports(false);
    }

    fn arm64_block_and_network_through_root_ports(oob: bool) {
        let _serial = serial();
        let dir = TempDir::new();
        let mut vm = launch_oob(spec(GuestArch::Aarch64, 2), &dir, oob, |a, o| finish(TestVm::launch(a, o)));
        let (rp0, rp1) = (port_slot(&vm, "rp0"), port_slot(&vm, "rp1"));

        let disk = plug_drive0(&mut vm, &dir);
        assert_eq!(
            disk.pci_path.as_ref().map(ToString::to_string),
            Some(format!("{rp0:02x}/00"))
        );
        let nic = finish(vm.hotplug().plug(user_nic("net0", "hostnet0"), Placement::Auto))
            .expect("hot-plug virtio-net");
        assert_eq!(
            nic.pci_path.as_ref().map(ToString::to_string),
            Some(format!("{rp1:02x}/00"))
        );
        assert!(vm.hotplug_state().free_root_ports().is_empty());

        assert_eq!(
            vm_parent_bus(&vm, "virtio-drive0"),
            "/machine/peripheral/rp0/rp0"
        );
        assert_eq!(vm_parent_bus(&vm, "net0"), "/machine/peripheral/rp1/rp1");
        let ids = vm_peripherals(&vm);
        assert!(ids.contains(&"virtio-drive0".to_owned()), "{ids:?}");
        assert!(ids.contains(&"net0".to_owned()), "{ids:?}");
        assert!(vm_block_nodes(&vm).contains(&"drive0".to_owned()));
        assert!(network_info(&vm).contains("hostnet0"));

        // No free root port left: the next device goes to the bridge.
        assert!(matches!(
            finish(vm.hotplug().add_block(
                    &drive(image(&dir, "disk1.img"), "drive1"),
                    BlockDriver::VirtioBlk,
                    Placement::RootPort,
                ))
                .expect_err("no free root port left"),
            HotplugError::Placement { .. }
        ));

        unplug_disk_and_nic(&mut vm);
        assert_eq!(vm.hotplug_state().free_root_ports(), ["rp0", "rp1"]);

        // arm64 virt has no CPU hotplug: a typed error.
        match finish(vm.hotplug().add_cpus(1)) {
            Err(HotplugError::CpuHotplugUnsupported { reason }) => {
                assert!(reason.contains("hot-plugging CPUs"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // And no pc-dimm without UEFI.
        assert!(matches!(
            finish(vm.hotplug().add_memory(128)),
            Err(HotplugError::MemoryHotplugUnsupported { .. })
        ));
        finish(vm.shutdown(Duration::from_millis(100))).expect("shutdown");
    }

    #[test]
    fn arm64_refused_steps_leave_nothing_behind_with_oob() {
        arm64_refused_steps_leave_nothing_behind(true);
    }

    #[test]
    fn arm64_refused_steps_leave_nothing_behind_without_oob() {
        arm64_refused_steps_leave_nothing_behind(false);
    }

    fn arm64_refused_steps_leave_nothing_behind(oob: bool) {
        let _serial = serial();
        let dir = TempDir::new();
        let mut vm = launch_oob(spec(GuestArch::Aarch64, 1), &dir, oob, |a, o| finish(TestVm::launch(a, o)));
        let nodes_before = vm_block_nodes(&vm);
        let chardevs_before = chardevs(&vm);

        // blockdev-add succeeds, device_add names a bus that does not exist.
        let err = finish(vm.hotplug().add_block(
                &drive(image(&dir, "disk0.img"), "drive0"),
                BlockDriver::VirtioBlk,
                Placement::Bus {
                    bus: "nope".into(),
                    addr: None,
                },
            ))
            .expect_err("device_add on a missing bus");
        assert!(
            err.to_string().contains("device_add virtio-drive0"),
            "{err}"
        );
        assert_eq!(vm_block_nodes(&vm), nodes_before);

        // netdev_add succeeds on the root port, device_add wants a ROM that does not exist.
        let mut nic = user_nic("net0", "hostnet0");
        nic.virtio.romfile = Some("/nonexistent/hvarch.rom".into());
        let err = finish(vm.hotplug().plug(nic, Placement::Auto))
            .expect_err("device_add with a missing ROM");
        assert!(err.to_string().contains("device_add net0"), "{err}");
        assert!(!network_info(&vm).contains("hostnet0"));
        assert_eq!(vm.hotplug_state().free_root_ports(), ["rp0"]);

        // chardev-add succeeds, device_add names a virtio-serial bus that does not exist.
        let chardev = Chardev::new("charport0", CharBackend::Null);
        let mut port = CharDevice::new("port0", chardev);
        port.bus = Some("nope.0".into());
        let err = finish(vm.hotplug().plug(port, Placement::AsIs))
            .expect_err("device_add on a missing virtio-serial bus");
        assert!(err.to_string().contains("device_add port0"), "{err}");
        assert_eq!(chardevs(&vm), chardevs_before);

        assert!(vm.hotplug_state().plugged_ids().is_empty());
        assert!(!vm_peripherals(&vm)
            .iter()
            .any(|id| ["virtio-drive0", "net0", "port0"].contains(&id.as_str())));
        // The root port is free: the same drive now plugs there.
        let slot = port_slot(&vm, "rp0");
        let disk = finish(vm.hotplug().add_block(
                &drive(image(&dir, "disk0.img"), "drive0"),
                BlockDriver::VirtioBlk,
                Placement::Auto,
            ))
            .expect("hot-plug after rollback");
        assert_eq!(
            disk.pci_path.map(|p| p.to_string()),
            Some(format!("{slot:02x}/00"))
        );
    }

    #[test]
    fn q35_cpu_and_memory_hotplug_with_oob() {
        q35_cpu_and_memory_hotplug(true);
    }

    #[test]
    fn q35_cpu_and_memory_hotplug_without_oob() {
        q35_cpu_and_memory_hotplug(false);
    }

    fn q35_cpu_and_memory_hotplug(oob: bool) {
        let _serial = serial();
        let dir = TempDir::new();
        let mut vm = launch_oob(spec(GuestArch::X86_64, 0), &dir, oob, |a, o| finish(TestVm::launch(a, o)));
        let cpus = |vm: &TestVm| {
            vm_qmp(vm, "query-cpus-fast", json!({}))
                .as_array()
                .map(Vec::len)
        };
        assert_eq!(cpus(&vm), Some(1));
        assert_eq!(finish(vm.hotplug().add_cpus(2)).expect("add vCPUs"), 2);
        assert_eq!(cpus(&vm), Some(3));
        assert_eq!(vm.hotplug_state().hotplugged_cpus(), ["cpu-0", "cpu-1"]);
        let ids = vm_peripherals(&vm);
        assert!(ids.contains(&"cpu-0".to_owned()) && ids.contains(&"cpu-1".to_owned()));
        // q35 refuses to unplug a vCPU of a guest that never ran: the vCPU stays registered.
        assert!(finish(vm.hotplug().remove_cpus(1, UNPLUG)).is_err());
        assert_eq!(vm.hotplug_state().hotplugged_cpus(), ["cpu-0", "cpu-1"]);

        let dimm = finish(vm.hotplug().add_memory(128)).expect("hot-plug memory");
        assert_eq!(dimm.id, "dimm0");
        let devices = vm_qmp(&vm, "query-memory-devices", json!({}));
        assert_eq!(devices[0]["type"], "dimm", "{devices}");
        assert_eq!(devices[0]["data"]["id"], "dimm0");
        assert_eq!(devices[0]["data"]["size"], 128 << 20);
        let second = finish(vm.hotplug().add_memory(128)).expect("second DIMM");
        assert_eq!(second.id, "dimm1");
    }

    #[test]
    fn arm64_memory_hotplug_with_uefi_with_oob() {
        arm64_memory_hotplug_with_uefi(true);
    }

    #[test]
    fn arm64_memory_hotplug_with_uefi_without_oob() {
        arm64_memory_hotplug_with_uefi(false);
    }

    fn arm64_memory_hotplug_with_uefi(oob: bool) {
        let _serial = serial();
        let dir = TempDir::new();
        let mut spec = spec(GuestArch::Aarch64, 0);
        spec.hypervisor.pflashes = vec![AAVMF_CODE.into(), AAVMF_VARS.into()];
        let mut vm = launch_oob(spec, &dir, oob, |a, o| finish(TestVm::launch(a, o)));
        let dimm = finish(vm.hotplug().add_memory(128)).expect("hot-plug memory");
        assert_eq!(dimm.id, "dimm0");
        let devices = vm_qmp(&vm, "query-memory-devices", json!({}));
        assert_eq!(devices[0]["type"], "dimm", "{devices}");
        assert_eq!(devices[0]["data"]["size"], 128 << 20);
        assert!(vm_peripherals(&vm).contains(&"dimm0".to_owned()));
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn two_hundred_cycles_leak_no_descriptor() {
    let _serial = serial();
    let dir = TempDir::new();
    let mut vm = launch(spec(GuestArch::Aarch64, 1), &dir);
    let disk = drive(image(&dir, "disk.img"), "drive0");
    let cycle = |vm: &mut Vm| {
        let plugged = vm
            .hotplug()
            .add_block(&disk, BlockDriver::VirtioBlk, Placement::Auto)
            .expect("hot-plug");
        assert!(plugged.pci_path.is_some());
        vm.hotplug().unplug(&plugged.id, UNPLUG).expect("unplug");
    };
    cycle(&mut vm);
    let before = open_fds();
    for _ in 0..200 {
        cycle(&mut vm);
    }
    assert_eq!(open_fds(), before);
    assert!(vm.hotplug_state().plugged_ids().is_empty());
    assert_eq!(vm.hotplug_state().free_root_ports(), ["rp0"]);
    assert!(!vm_block_nodes(&vm).contains(&"drive0".to_owned()));
}

#[test]
fn root_port_paths_computed_from_the_configuration_match_query_pci() {
    let _serial = serial();
    let rng = |id: &str, addr: Option<u8>| {
        let mut rng = RngDevice::new(id, format!("{id}-source"));
        rng.addr = addr.map(|slot| PciAddr::slot_only(slot).expect("slot"));
        rng
    };
    // (arch, root ports, bridges, extra PCI devices on the root bus)
    let mixes = [
        (GuestArch::Aarch64, 3, 1, vec![]),
        (GuestArch::X86_64, 2, 1, vec![]),
        (
            GuestArch::Aarch64,
            2,
            2,
            vec![rng("rngx", Some(9)), rng("rngy", None)],
        ),
        (
            GuestArch::X86_64,
            4,
            0,
            vec![rng("rngx", None), rng("rngy", Some(0x0c))],
        ),
    ];
    for (arch, ports, bridges, extra) in mixes {
        let dir = TempDir::new();
        let mut spec = spec(arch, ports);
        spec.hypervisor.default_bridges = bridges;
        spec.extra_devices = extra.into_iter().map(Into::into).collect();
        let vm = launch(spec, &dir);
        for i in 0..ports {
            let port = format!("rp{i}");
            let computed = vm.hotplug_state().root_port_slot(&port);
            assert_eq!(
                computed.map(u64::from),
                Some(port_slot(&vm, &port)),
                "{arch} with {ports} root ports and {bridges} bridges: {port}"
            );
        }
    }
}

/// Loses the reply to the first `device_add` of device `id`: the command reaches QEMU, which
/// creates the device, and after `delay` the caller sees a timeout (a reply that came too
/// late). Every other step goes to the VM's blocking driver.
struct LoseDeviceAddReply<'q> {
    inner: Blocking<'q>,
    id: &'static str,
    delay: Duration,
    lost: bool,
}

impl SyncDriver for LoseDeviceAddReply<'_> {
    fn step(&mut self, step: Step) -> Outcome {
        let lose = !self.lost
            && matches!(&step, Step::Execute { command, .. }
                if command.name == "device_add" && command.arguments["id"] == self.id);
        let got = self.inner.step(step);
        if !lose {
            return got;
        }
        self.lost = true;
        std::thread::sleep(self.delay);
        Outcome::Reply(Err(hvarch_qmp::Error::Timeout {
            what: "command `device_add`".into(),
            after: self.delay,
        }))
    }
}

/// The guest's block devices, from its next state line satisfying `wanted`.
fn wait_disks(console: &Console, what: &str, wanted: impl Fn(&[String]) -> bool) -> Vec<String> {
    let (state, _) = console
        .wait_state(what, Duration::from_secs(60), |s| wanted(&s.disks))
        .unwrap_or_else(|e| panic!("{e}"));
    state.disks
}

#[test]
fn arm64_an_unconfirmed_rollback_is_pending_until_the_guest_releases_the_device() {
    let _serial = serial();
    let dir = TempDir::new();
    let mut options = GuestOptions::new("pending-removal", dir.path());
    options.uefi = false;
    let (mut vm, console) =
        guest::boot(&options, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    wait_disks(&console, "the first state", |_| true);
    let disk = drive(image(&dir, "disk0.img"), "drive0");

    // The device_add takes effect, its reply is "lost" after 2 s (by then the guest has
    // powered the slot and uses the disk); the undo's device_del waits 1 s, less than the 5 s
    // pciehp waits, and the VM is paused before the guest answers.
    let err = vm
        .hotplug_with(|inner| LoseDeviceAddReply {
            inner,
            id: "virtio-drive0",
            delay: Duration::from_secs(2),
            lost: false,
        })
        .rollback_timeout(Duration::from_secs(1))
        .add_block(&disk, BlockDriver::VirtioBlk, Placement::Auto)
        .unwrap_err();
    vm.pause().expect("stop");
    assert!(
        err.to_string().contains("device_add virtio-drive0"),
        "{err}"
    );
    assert_eq!(vm.hotplug_state().pending_removal_ids(), ["virtio-drive0"]);
    assert!(vm.hotplug_state().plugged_ids().is_empty());
    assert_eq!(
        vm.hotplug_state().free_root_ports(),
        ["rp1"],
        "rp0 stays reserved"
    );
    assert!(vm_peripherals(&vm).contains(&"virtio-drive0".to_owned()));
    assert!(vm_block_nodes(&vm).contains(&"drive0".to_owned()));

    // The same drive while the guest cannot answer: a clear refusal, nothing sent.
    let again = vm
        .hotplug()
        .add_block(&disk, BlockDriver::VirtioBlk, Placement::Auto);
    assert!(
        matches!(&again, Err(HotplugError::RemovalPending { id }) if id == "virtio-drive0"),
        "{again:?}"
    );
    // QEMU still has it: reconcile completes nothing, and neither do 3 paused seconds.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        vm.hotplug().reconcile().expect("reconcile"),
        Vec::<String>::new()
    );
    assert_eq!(vm.hotplug_state().pending_removal_ids(), ["virtio-drive0"]);

    // Running again, the guest releases the device and QEMU deletes it (DEVICE_DELETED once
    // the device is finalized): a hotplug call then completes the removal (blockdev-del, port
    // freed). Until QEMU is done, reconcile() completes nothing (or keeps the node pending,
    // still in use by the finalizing device).
    vm.resume().expect("cont");
    wait_disks(&console, "the disk released", |disks| disks.is_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !vm.hotplug_state().pending_removal_ids().is_empty() {
        assert!(Instant::now() < deadline, "the removal never completed");
        std::thread::sleep(Duration::from_millis(50));
        let _ = vm.hotplug().reconcile();
    }
    assert!(!vm_block_nodes(&vm).contains(&"drive0".to_owned()));
    assert_eq!(vm.hotplug_state().free_root_ports(), ["rp0", "rp1"]);
    let plugged = vm
        .hotplug()
        .add_block(&disk, BlockDriver::VirtioBlk, Placement::Auto)
        .unwrap_or_else(|e| panic!("the same drive again: {e}"));
    assert_eq!(
        plugged.location,
        hvarch::Location::RootPort { port: "rp0".into() }
    );
    assert!(vm.hotplug_state().pending_removal_ids().is_empty());
    assert_eq!(
        wait_disks(&console, "the disk again", |d| !d.is_empty()),
        ["vda"]
    );
}

/// The `devno` QEMU reports for device `id`.
fn devno(vm: &Vm, id: &str) -> String {
    vm_qmp(
        vm,
        "qom-get",
        json!({"path": format!("/machine/peripheral/{id}"), "property": "devno"}),
    )
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

fn cpu_count(vm: &Vm) -> Option<usize> {
    vm_qmp(vm, "query-cpus-fast", json!({}))
        .as_array()
        .map(Vec::len)
}

#[test]
fn pseries_block_network_and_cpus_through_its_bridge() {
    let _serial = serial();
    let dir = TempDir::new();
    let mut vm = launch(spec(GuestArch::Ppc64le, 0), &dir);

    let disk = blocking::plug_drive0(&mut vm, &dir);
    assert_eq!(
        disk.pci_path.as_ref().map(ToString::to_string),
        Some("02/01".into())
    );
    assert_eq!(
        vm_parent_bus(&vm, "virtio-drive0"),
        "/machine/peripheral/pci-bridge-0/pci-bridge-0"
    );
    let addr = vm_qmp(
        &vm,
        "qom-get",
        json!({"path": "/machine/peripheral/virtio-drive0", "property": "addr"}),
    );
    assert_eq!(addr, json!(8), "slot 1, function 0 (devfn 8)");
    assert!(vm_block_nodes(&vm).contains(&"drive0".to_owned()));
    let nic = vm
        .hotplug()
        .plug(user_nic("net0", "hostnet0"), Placement::Auto)
        .expect("hot-plug virtio-net");
    assert_eq!(
        nic.pci_path.map(|p| p.to_string()),
        Some("02/02".to_owned())
    );
    assert!(network_info(&vm).contains("hostnet0"));

    blocking::unplug_disk_and_nic(&mut vm);
    assert!(vm.hotplug_state().plugged_ids().is_empty());

    // pseries hot-plugs vCPU cores.
    assert_eq!(cpu_count(&vm), Some(1));
    assert_eq!(vm.hotplug().add_cpus(1).expect("add a vCPU"), 1);
    assert_eq!(cpu_count(&vm), Some(2));
    assert_eq!(vm.hotplug_state().hotplugged_cpus(), ["cpu-0"]);
    vm.shutdown(Duration::from_millis(100)).expect("shutdown");
}

#[test]
fn s390x_block_network_and_cpus_on_ccw() {
    let _serial = serial();
    let dir = TempDir::new();
    let mut vm = launch(spec(GuestArch::S390x, 0), &dir);
    // serial0, scsi0 and rng0-dev hold fe.0.0001 to fe.0.0003.
    assert_eq!(devno(&vm, "rng0-dev"), "fe.0.0003");

    let disk = blocking::plug_drive0(&mut vm, &dir);
    assert_eq!(disk.pci_path, None);
    assert_eq!(disk.ccw_address().as_deref(), Some("0.0.0004"));
    assert_eq!(devno(&vm, "virtio-drive0"), "fe.0.0004");
    assert_eq!(
        vm_parent_bus(&vm, "virtio-drive0"),
        "/machine/virtual-css-bridge/virtual-css"
    );
    assert!(vm_block_nodes(&vm).contains(&"drive0".to_owned()));

    // A NIC on the CCW transport takes the next number (Kata 1.x's was fe.0.30303035).
    let mut nic = user_nic("net0", "hostnet0");
    nic.virtio = VirtioOpts::on(Transport::Ccw);
    let nic = vm
        .hotplug()
        .plug(nic, Placement::Auto)
        .expect("hot-plug virtio-net-ccw");
    assert_eq!(nic.ccw_address().as_deref(), Some("0.0.0005"));
    assert_eq!(devno(&vm, "net0"), "fe.0.0005");
    assert!(network_info(&vm).contains("hostnet0"));

    blocking::unplug_disk_and_nic(&mut vm);

    // The freed number is the next one given, through BlockDriver::VirtioBlkCcw too.
    let again = vm
        .hotplug()
        .add_block(
            &drive(image(&dir, "disk1.img"), "drive1"),
            BlockDriver::VirtioBlkCcw,
            Placement::Auto,
        )
        .expect("hot-plug virtio-blk-ccw again");
    assert_eq!(again.ccw_address().as_deref(), Some("0.0.0004"));
    assert_eq!(devno(&vm, "virtio-drive1"), "fe.0.0004");

    // s390x hot-plugs vCPUs, but has no memory hotplug.
    assert_eq!(cpu_count(&vm), Some(1));
    assert_eq!(vm.hotplug().add_cpus(1).expect("add a vCPU"), 1);
    assert_eq!(cpu_count(&vm), Some(2));
    assert!(matches!(
        vm.hotplug().add_memory(128),
        Err(HotplugError::MemoryHotplugUnsupported { .. })
    ));
    vm.shutdown(Duration::from_millis(100)).expect("shutdown");
}
