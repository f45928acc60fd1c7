//! The hotplug engine and Kata's flows against the scripted fake QMP server: the exact
//! command sequence (names and JSON arguments) of every flow, including those this machine
//! cannot run for real (VFIO, vhost-user-blk, network with tap and vhost descriptors), and the
//! exact undo sequence when a step is refused, with the slot freed.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hvarch::hotplug::{HotplugError, HotplugState, Hotplugger, Location, Placement};
use hvarch::hvarch_arch::resources::{
    BlockDrive, EndpointKind, InterworkingModel, NetEndpoint, VfioDev, VhostUserDevice,
    VhostUserKind,
};
use hvarch::hvarch_arch::settings::BlockDriver;
use hvarch::hvarch_devices::fd::SharedFd;
use hvarch::hvarch_devices::memory::{MemoryBackend, MemoryDevice};
use hvarch::{assemble, Accelerator, Assembled, GuestArch, VmSpec};
use hvarch_qmp::testing::{FakeConn, FakeServer};
use hvarch_qmp::{Config, Qmp};
use serde_json::{json, Value};

/// How the fake QEMU answers one command.
enum Answer {
    Ok(Value),
    /// An error reply of class `GenericError` with this description.
    Refuse(&'static str),
    /// `{}` then `DEVICE_DELETED` for the command's id.
    Deleted,
    /// `{}` and no event.
    Silent,
    /// No reply at all (the command times out on our side).
    NoReply,
}

type Log = Arc<Mutex<Vec<(String, Value)>>>;

/// A fake QEMU answering with `rule`; every command (but the handshake) is logged with its
/// arguments, and descriptors passed with `getfd` are counted.
struct Fake {
    qmp: Qmp,
    server: Option<FakeServer>,
    log: Log,
    fds: Arc<Mutex<Vec<OwnedFd>>>,
}

impl Fake {
    fn new(rule: impl Fn(&str, &Value, usize) -> Answer + Send + 'static) -> Fake {
        Fake::with_timeout(rule, Duration::from_secs(5))
    }

    fn with_timeout(
        rule: impl Fn(&str, &Value, usize) -> Answer + Send + 'static,
        command_timeout: Duration,
    ) -> Fake {
        let log: Log = Arc::default();
        let fds: Arc<Mutex<Vec<OwnedFd>>> = Arc::default();
        let (log2, fds2) = (log.clone(), fds.clone());
        let (client, server) = FakeServer::spawn(move |mut c: FakeConn| {
            c.handshake();
            let mut n = 0;
            while let Some(cmd) = c.recv() {
                let name = cmd["execute"].as_str().unwrap_or_default().to_owned();
                let args = cmd.get("arguments").cloned().unwrap_or(json!({}));
                fds2.lock().expect("lock").extend(c.take_fds());
                log2.lock()
                    .expect("lock")
                    .push((name.clone(), args.clone()));
                match rule(&name, &args, n) {
                    Answer::Ok(v) => c.reply(&cmd, v),
                    Answer::Refuse(desc) => c.reply_error(&cmd, "GenericError", Some(desc)),
                    Answer::Deleted => {
                        c.reply(&cmd, json!({}));
                        c.event(
                            "DEVICE_DELETED",
                            json!({"device": args["id"], "path": "/machine/peripheral/x"}),
                        );
                    }
                    Answer::Silent => c.reply(&cmd, json!({})),
                    Answer::NoReply => {}
                }
                n += 1;
            }
        })
        .expect("spawn fake QMP");
        let config = Config {
            command_timeout,
            ..Config::default()
        };
        let qmp = Qmp::from_stream(client, &config).expect("connect");
        Fake {
            qmp,
            server: Some(server),
            log,
            fds,
        }
    }

    /// The commands since the last call, names and arguments.
    fn take(&self) -> Vec<(String, Value)> {
        std::mem::take(&mut *self.log.lock().expect("lock"))
    }

    fn names(&self) -> Vec<String> {
        self.take().into_iter().map(|(n, _)| n).collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.qmp.close();
        if let Some(server) = self.server.take() {
            server.join();
        }
    }
}

/// Answers like QEMU with root ports rp0 (slot 3) and rp1 (slot 4) on pcie.0 and a vfio
/// device on the root bus at slot 5; `device_del` releases at once; `refuse` names a
/// command (and optionally its n-th occurrence) to refuse.
fn qemu_like(refuse: Option<(&'static str, usize)>) -> impl Fn(&str, &Value, usize) -> Answer {
    let seen = Mutex::new(std::collections::HashMap::<String, usize>::new());
    move |name, _args, _n| {
        let count = {
            let mut seen = seen.lock().expect("lock");
            let c = seen.entry(name.to_owned()).or_default();
            *c += 1;
            *c
        };
        if let Some((bad, nth)) = refuse {
            if bad == name && (nth == 0 || nth == count) {
                return Answer::Refuse("refused by the fake");
            }
        }
        match name {
            "query-pci" => Answer::Ok(json!([{"bus": 0, "devices": [
                {"bus": 0, "slot": 0, "function": 0, "qdev_id": ""},
                {"bus": 0, "slot": 2, "function": 0, "qdev_id": "pci-bridge-0"},
                {"bus": 0, "slot": 3, "function": 0, "qdev_id": "rp0"},
                {"bus": 0, "slot": 4, "function": 0, "qdev_id": "rp1"},
                {"bus": 0, "slot": 5, "function": 0, "qdev_id": "gpu0"},
            ]}])),
            "device_del" => Answer::Deleted,
            _ => Answer::Ok(json!({})),
        }
    }
}

fn spec(arch: GuestArch, root_ports: u32) -> VmSpec {
    let mut spec = VmSpec::kata_default();
    spec.arch = Some(arch);
    spec.hypervisor.accelerator = Accelerator::Tcg;
    spec.hypervisor.pcie_root_ports = root_ports;
    spec.host_memory_mb = Some(8192);
    spec.host_cpus = Some(4);
    if arch == GuestArch::X86_64 {
        spec.hypervisor.machine_type = Some("q35".into());
    }
    spec
}

fn new_vm(arch: GuestArch, root_ports: u32) -> (Assembled, HotplugState) {
    let assembled = assemble(&spec(arch, root_ports)).expect("assemble");
    let state = HotplugState::new(&assembled);
    (assembled, state)
}

fn drive(id: &str) -> BlockDrive {
    BlockDrive {
        file: "/var/lib/disk.img".into(),
        format: "raw".into(),
        id: id.into(),
        read_only: false,
        share_rw: false,
        index: 0,
    }
}

fn blockdev_add(id: &str) -> Value {
    json!({"driver": "raw", "node-name": id,
           "file": {"driver": "file", "filename": "/var/lib/disk.img", "aio": "threads"}})
}

fn dev_null() -> SharedFd {
    SharedFd::new(OwnedFd::from(
        std::fs::File::open("/dev/null").expect("open /dev/null"),
    ))
}

const T: Duration = Duration::from_secs(2);

#[test]
fn virtio_blk_on_a_root_port_and_back() {
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 2);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let plugged = hp
        .add_block(&drive("drive0"), BlockDriver::VirtioBlk, Placement::Auto)
        .unwrap();
    assert_eq!(plugged.id, "virtio-drive0");
    assert_eq!(plugged.pci_path.as_ref().unwrap().to_string(), "03/00");
    assert_eq!(plugged.location, Location::RootPort { port: "rp0".into() });
    assert_eq!(
        fake.take(),
        [
            ("query-pci".into(), json!({})),
            ("blockdev-add".into(), blockdev_add("drive0")),
            (
                "device_add".into(),
                json!({"driver": "virtio-blk-pci", "id": "virtio-drive0", "drive": "drive0",
                       "bus": "rp0", "share-rw": true})
            ),
        ]
    );
    assert_eq!(hp.state().free_root_ports(), ["rp1"]);
    hp.unplug("virtio-drive0", T).unwrap();
    assert_eq!(
        fake.take(),
        [
            ("device_del".into(), json!({"id": "virtio-drive0"})),
            ("blockdev-del".into(), json!({"node-name": "drive0"})),
        ]
    );
    assert_eq!(hp.state().free_root_ports(), ["rp0", "rp1"]);
    assert!(hp.state().plugged_ids().is_empty());
    assert!(matches!(
        hp.unplug("virtio-drive0", T),
        Err(HotplugError::NotPlugged { .. })
    ));
}

#[test]
fn virtio_blk_on_a_bridge_slot_rollback_frees_the_slot() {
    // device_add refused the first time only.
    let fake = Fake::new(qemu_like(Some(("device_add", 1))));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let err = hp
        .add_block(&drive("drive0"), BlockDriver::VirtioBlk, Placement::Auto)
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("hotplug step `device_add virtio-drive0` failed"),
        "{err}"
    );
    assert_eq!(
        fake.take(),
        [
            ("blockdev-add".into(), blockdev_add("drive0")),
            (
                "device_add".into(),
                json!({"driver": "virtio-blk-pci", "id": "virtio-drive0", "drive": "drive0",
                       "bus": "pci-bridge-0", "addr": "01", "share-rw": true})
            ),
            ("blockdev-del".into(), json!({"node-name": "drive0"})),
        ]
    );
    assert!(hp.state().plugged_ids().is_empty());
    // The slot was freed: the next device gets slot 1 again.
    let plugged = hp
        .add_block(&drive("drive1"), BlockDriver::VirtioBlk, Placement::Bridge)
        .unwrap();
    assert_eq!(plugged.pci_path.unwrap().to_string(), "02/01");
    let log = fake.take();
    assert_eq!(log[1].1["addr"], "01");
    assert_eq!(log[1].1["bus"], "pci-bridge-0");
    // A second one takes slot 2.
    let second = hp
        .add_block(&drive("drive2"), BlockDriver::VirtioBlk, Placement::Bridge)
        .unwrap();
    assert_eq!(second.pci_path.unwrap().to_string(), "02/02");
    fake.take();
    hp.unplug("virtio-drive1", T).unwrap();
    assert_eq!(fake.names(), ["device_del", "blockdev-del"]);
    let third = hp
        .add_block(&drive("drive3"), BlockDriver::VirtioBlk, Placement::Bridge)
        .unwrap();
    assert_eq!(third.pci_path.unwrap().to_string(), "02/01");
}

#[test]
fn a_timed_out_device_add_is_undone_too_and_an_unconfirmed_undo_keeps_the_slot() {
    // device_add never answered: QEMU may still create the device, so the rollback deletes
    // it as well as the backend. Here the device_del is confirmed: the slot is free again.
    let rule = |confirm: bool| {
        move |name: &str, args: &Value, n: usize| match name {
            "device_add" if args["id"] == "virtio-drive0" => Answer::NoReply,
            "device_del" if confirm => Answer::Deleted,
            "device_del" => Answer::Silent,
            _ => qemu_like(None)(name, args, n),
        }
    };
    let fake = Fake::with_timeout(rule(true), Duration::from_millis(300));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let err = hp
        .add_block(&drive("drive0"), BlockDriver::VirtioBlk, Placement::Bridge)
        .unwrap_err();
    assert!(
        err.to_string().contains("device_add virtio-drive0"),
        "{err}"
    );
    assert_eq!(
        fake.names(),
        ["blockdev-add", "device_add", "device_del", "blockdev-del"]
    );
    let next = hp
        .add_block(&drive("drive1"), BlockDriver::VirtioBlk, Placement::Bridge)
        .unwrap();
    assert_eq!(next.pci_path.unwrap().to_string(), "02/01");
    drop(fake);

    // Not confirmed (no DEVICE_DELETED within the rollback's wait): the slot stays reserved.
    let fake = Fake::with_timeout(rule(false), Duration::from_millis(300));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    hp.add_block(&drive("drive0"), BlockDriver::VirtioBlk, Placement::Bridge)
        .unwrap_err();
    let next = hp
        .add_block(&drive("drive1"), BlockDriver::VirtioBlk, Placement::Bridge)
        .unwrap();
    assert_eq!(next.pci_path.unwrap().to_string(), "02/02");
}

#[test]
fn no_root_port_left_is_a_placement_error_without_commands() {
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 1);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    hp.add_block(&drive("a"), BlockDriver::VirtioBlk, Placement::RootPort)
        .unwrap();
    fake.take();
    let err = hp
        .add_block(&drive("b"), BlockDriver::VirtioBlk, Placement::RootPort)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot place virtio-blk virtio-b: all 1 PCIe root ports are in use"
    );
    assert!(fake.take().is_empty());
    // Auto falls back to the bridge.
    let plugged = hp
        .add_block(&drive("b"), BlockDriver::VirtioBlk, Placement::Auto)
        .unwrap();
    assert!(matches!(plugged.location, Location::Bridge(_)));
    assert!(matches!(
        hp.add_block(&drive("b"), BlockDriver::VirtioBlk, Placement::Auto),
        Err(HotplugError::AlreadyPlugged { .. })
    ));
}

#[test]
fn virtio_scsi_disk_gets_scsi_id_and_lun_from_the_index() {
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let mut d = drive("drive7");
    d.index = 300;
    let plugged = hp
        .add_block(&d, BlockDriver::VirtioScsi, Placement::Auto)
        .unwrap();
    assert_eq!(plugged.pci_path, None);
    assert_eq!(
        fake.take(),
        [
            ("blockdev-add".into(), blockdev_add("drive7")),
            (
                "device_add".into(),
                json!({"driver": "scsi-hd", "id": "virtio-drive7", "drive": "drive7",
                       "bus": "scsi0.0", "scsi-id": 1, "lun": 44, "share-rw": true})
            ),
        ]
    );
    hp.unplug("virtio-drive7", T).unwrap();
    assert_eq!(fake.names(), ["device_del", "blockdev-del"]);
}

fn vhost_user_blk() -> VhostUserDevice {
    VhostUserDevice {
        kind: VhostUserKind::Blk,
        socket_path: "/run/vhost/blk0.sock".into(),
        dev_id: "blk0".into(),
        mac: None,
        tag: None,
    }
}

#[test]
fn vhost_user_blk_chardev_then_device_and_rollback() {
    let fake = Fake::new(qemu_like(Some(("device_add", 1))));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let chardev_add = json!({"id": "char-blk0", "backend": {"type": "socket", "data": {
        "addr": {"type": "unix", "data": {"path": "/run/vhost/blk0.sock"}}}}});
    let device_add = json!({"driver": "vhost-user-blk-pci", "id": "virtio-blk0",
        "chardev": "char-blk0", "bus": "pci-bridge-0", "addr": "01"});
    assert!(hp
        .add_vhost_user(&vhost_user_blk(), Placement::Bridge)
        .is_err());
    assert_eq!(
        fake.take(),
        [
            ("chardev-add".into(), chardev_add.clone()),
            ("device_add".into(), device_add.clone()),
            ("chardev-remove".into(), json!({"id": "char-blk0"})),
        ]
    );
    let plugged = hp
        .add_vhost_user(&vhost_user_blk(), Placement::Bridge)
        .unwrap();
    assert_eq!(plugged.pci_path.unwrap().to_string(), "02/01");
    assert_eq!(
        fake.take(),
        [
            ("chardev-add".into(), chardev_add),
            ("device_add".into(), device_add),
        ]
    );
    hp.unplug("virtio-blk0", T).unwrap();
    assert_eq!(
        fake.take(),
        [
            ("device_del".into(), json!({"id": "virtio-blk0"})),
            ("chardev-remove".into(), json!({"id": "char-blk0"})),
        ]
    );
    let mut fs = vhost_user_blk();
    fs.kind = VhostUserKind::Fs;
    assert!(matches!(
        hp.add_vhost_user(&fs, Placement::Auto),
        Err(HotplugError::Invalid { .. })
    ));
}

fn vfio(id: &str) -> VfioDev {
    VfioDev {
        id: id.into(),
        bdf: "0000:02:00.0".into(),
        vendor_id: None,
        device_id: None,
        bus: None,
    }
}

#[test]
fn vfio_on_a_bridge_slot_or_the_root_bus() {
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let plugged = hp.add_vfio(&vfio("vfio0"), Placement::Bridge).unwrap();
    assert_eq!(plugged.pci_path.unwrap().to_string(), "02/01");
    assert_eq!(
        fake.take(),
        [(
            "device_add".into(),
            json!({"driver": "vfio-pci", "id": "vfio0", "host": "0000:02:00.0",
                   "bus": "pci-bridge-0", "addr": "01"})
        )]
    );
    let plugged = hp.add_vfio(&vfio("gpu0"), Placement::RootBus).unwrap();
    assert_eq!(plugged.pci_path.unwrap().to_string(), "05");
    assert_eq!(
        fake.take(),
        [
            (
                "device_add".into(),
                json!({"driver": "vfio-pci", "id": "gpu0", "host": "0000:02:00.0"})
            ),
            ("query-pci".into(), json!({})),
        ]
    );
    hp.unplug("vfio0", T).unwrap();
    hp.unplug("gpu0", T).unwrap();
    assert_eq!(fake.names(), ["device_del", "device_del"]);
}

fn endpoint() -> NetEndpoint {
    NetEndpoint {
        kind: EndpointKind::Tuntap,
        interworking: InterworkingModel::TcFilter,
        ifname: "tap0".into(),
        mac: "52:54:00:12:34:56".into(),
        vm_fds: vec![dev_null(), dev_null()],
        vhost_fds: vec![dev_null(), dev_null()],
    }
}

fn netdev_add() -> Value {
    json!({"type": "tap", "id": "tap0", "vhost": true,
           "vhostfds": "virtio-tap0-fd0:virtio-tap0-fd1",
           "fds": "virtio-tap0-fd2:virtio-tap0-fd3"})
}

fn getfds() -> Vec<(String, Value)> {
    (0..4)
        .map(|i| {
            (
                "getfd".into(),
                json!({"fdname": format!("virtio-tap0-fd{i}")}),
            )
        })
        .collect()
}

#[test]
fn network_with_tap_and_vhost_fds() {
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 2);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let plugged = hp.add_network(&endpoint(), Placement::Auto).unwrap();
    assert_eq!(plugged.pci_path.unwrap().to_string(), "03/00");
    let mut expected = vec![("query-pci".to_owned(), json!({}))];
    expected.extend(getfds());
    expected.push(("netdev_add".into(), netdev_add()));
    expected.push((
        "device_add".into(),
        json!({"driver": "virtio-net-pci", "id": "virtio-tap0", "netdev": "tap0",
               "mac": "52:54:00:12:34:56", "bus": "rp0", "mq": true, "vectors": 6}),
    ));
    assert_eq!(fake.take(), expected);
    assert_eq!(
        fake.fds.lock().expect("lock").len(),
        4,
        "four descriptors passed"
    );
    hp.unplug("virtio-tap0", T).unwrap();
    assert_eq!(
        fake.take(),
        [
            ("device_del".into(), json!({"id": "virtio-tap0"})),
            ("netdev_del".into(), json!({"id": "tap0"})),
        ]
    );
}

#[test]
fn network_rollbacks() {
    // netdev_add refused: the four descriptors QEMU received are closed, the port freed.
    let fake = Fake::new(qemu_like(Some(("netdev_add", 1))));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 1);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let err = hp.add_network(&endpoint(), Placement::Auto).unwrap_err();
    assert!(err.to_string().contains("`netdev_add tap0`"), "{err}");
    let mut expected = vec![("query-pci".to_owned(), json!({}))];
    expected.extend(getfds());
    expected.push(("netdev_add".into(), netdev_add()));
    for i in 0..4 {
        expected.push((
            "closefd".into(),
            json!({"fdname": format!("virtio-tap0-fd{i}")}),
        ));
    }
    assert_eq!(fake.take(), expected);
    assert_eq!(hp.state().free_root_ports(), ["rp0"]);
    drop(fake);

    // device_add refused: the netdev (which consumed the descriptors) is deleted.
    let fake = Fake::new(qemu_like(Some(("device_add", 1))));
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    hp.add_network(&endpoint(), Placement::Auto).unwrap_err();
    let log = fake.take();
    let names: Vec<&str> = log.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "query-pci",
            "getfd",
            "getfd",
            "getfd",
            "getfd",
            "netdev_add",
            "device_add",
            "netdev_del"
        ]
    );
    assert_eq!(log[7].1, json!({"id": "tap0"}));
    assert_eq!(hp.state().free_root_ports(), ["rp0"]);
    drop(fake);

    // The second getfd refused: the first descriptor is closed, nothing else was created.
    let fake = Fake::new(qemu_like(Some(("getfd", 2))));
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let err = hp.add_network(&endpoint(), Placement::Bridge).unwrap_err();
    assert!(err.to_string().contains("`getfd virtio-tap0-fd1`"), "{err}");
    assert_eq!(
        fake.take(),
        [
            ("getfd".into(), json!({"fdname": "virtio-tap0-fd0"})),
            ("getfd".into(), json!({"fdname": "virtio-tap0-fd1"})),
            ("closefd".into(), json!({"fdname": "virtio-tap0-fd0"})),
        ]
    );
    // The bridge slot was freed too.
    let plugged = hp.add_vfio(&vfio("vfio0"), Placement::Bridge).unwrap();
    assert_eq!(plugged.pci_path.unwrap().to_string(), "02/01");
}

fn hotpluggable_cpus() -> Value {
    json!([
        {"type": "max-x86_64-cpu", "vcpus-count": 1,
         "props": {"socket-id": 3, "die-id": 0, "core-id": 0, "thread-id": 0}},
        {"type": "max-x86_64-cpu", "vcpus-count": 1,
         "props": {"socket-id": 2, "die-id": 0, "core-id": 0, "thread-id": 0}},
        {"type": "max-x86_64-cpu", "vcpus-count": 1,
         "props": {"socket-id": 1, "die-id": 0, "core-id": 0, "thread-id": 0}},
        {"type": "max-x86_64-cpu", "vcpus-count": 1, "qom-path": "/machine/unattached/device[0]",
         "props": {"socket-id": 0, "die-id": 0, "core-id": 0, "thread-id": 0}},
    ])
}

#[test]
fn cpus_added_from_free_slots_and_removed_last_first() {
    let fake = Fake::new(|name, _args, _| match name {
        "query-hotpluggable-cpus" => Answer::Ok(hotpluggable_cpus()),
        "device_del" => Answer::Deleted,
        _ => Answer::Ok(json!({})),
    });
    let (mut vm, mut state) = new_vm(GuestArch::X86_64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    assert_eq!(hp.add_cpus(2).unwrap(), 2);
    assert_eq!(
        fake.take(),
        [
            ("query-hotpluggable-cpus".into(), json!({})),
            (
                "device_add".into(),
                json!({"driver": "max-x86_64-cpu", "id": "cpu-0", "socket-id": 3, "die-id": 0,
                       "core-id": 0, "thread-id": 0})
            ),
            (
                "device_add".into(),
                json!({"driver": "max-x86_64-cpu", "id": "cpu-1", "socket-id": 2, "die-id": 0,
                       "core-id": 0, "thread-id": 0})
            ),
        ]
    );
    assert_eq!(hp.state().hotplugged_cpus(), ["cpu-0", "cpu-1"]);
    // Clamped to the maximum (4 host CPUs, 1 at boot, 2 added): one more at most.
    assert_eq!(hp.add_cpus(5).unwrap(), 1);
    fake.take();
    assert_eq!(hp.add_cpus(1).unwrap(), 0);
    assert!(fake.take().is_empty());
    assert_eq!(hp.remove_cpus(2, T).unwrap(), 2);
    assert_eq!(
        fake.take(),
        [
            ("device_del".into(), json!({"id": "cpu-2"})),
            ("device_del".into(), json!({"id": "cpu-1"})),
        ]
    );
    assert_eq!(hp.state().hotplugged_cpus(), ["cpu-0"]);
}

#[test]
fn cpus_partial_and_unsupported() {
    // Every device_add but the first refused: one of two added.
    let fake = Fake::new(|name, _args, n| match name {
        "query-hotpluggable-cpus" => Answer::Ok(hotpluggable_cpus()),
        "device_add" if n > 1 => Answer::Refuse("no"),
        _ => Answer::Ok(json!({})),
    });
    let (mut vm, mut state) = new_vm(GuestArch::X86_64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let err = hp.add_cpus(2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "failed to hot add vCPUs: only 1 vCPUs of 2 were added"
    );
    assert_eq!(hp.state().hotplugged_cpus(), ["cpu-0"]);
    drop(fake);

    let fake = Fake::new(|name, _args, _| match name {
        "query-hotpluggable-cpus" => Answer::Refuse("machine does not support hot-plugging CPUs"),
        _ => Answer::Ok(json!({})),
    });
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    match hp.add_cpus(1) {
        Err(HotplugError::CpuHotplugUnsupported { reason }) => {
            assert_eq!(reason, "machine does not support hot-plugging CPUs")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn memory_dimm_slot_after_the_highest_and_rollback() {
    let fake = Fake::new(|name, _args, _| match name {
        "query-memory-devices" => Answer::Ok(json!([
            {"type": "dimm", "data": {"slot": 0, "id": "dimm0", "memdev": "/objects/mem0",
             "addr": 4294967296u64, "size": 134217728, "node": 0, "hotplugged": true,
             "hotpluggable": true}},
            {"type": "virtio-mem", "data": {"id": "vm0"}},
        ])),
        "device_add" => Answer::Refuse("pc-dimm refused"),
        _ => Answer::Ok(json!({})),
    });
    let (mut vm, mut state) = new_vm(GuestArch::X86_64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    assert!(hp.add_memory(128).is_err());
    assert_eq!(
        fake.take(),
        [
            ("query-memory-devices".into(), json!({})),
            (
                "object-add".into(),
                json!({"qom-type": "memory-backend-ram", "id": "mem1", "size": 134217728})
            ),
            (
                "device_add".into(),
                json!({"driver": "pc-dimm", "id": "dimm1", "memdev": "mem1"})
            ),
            ("object-del".into(), json!({"id": "mem1"})),
        ]
    );
}

#[test]
fn memory_on_arm64_needs_uefi() {
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let err = hp.add_memory(128).unwrap_err();
    assert!(matches!(err, HotplugError::MemoryHotplugUnsupported { .. }));
    assert!(err.to_string().contains("UEFI"), "{err}");
    assert!(fake.take().is_empty());

    // With the UEFI pflash pair it goes ahead.
    let mut s = spec(GuestArch::Aarch64, 0);
    s.hypervisor.pflashes = vec!["/fw/AAVMF_CODE.fd".into(), "/fw/AAVMF_VARS.fd".into()];
    let mut uefi = assemble(&s).unwrap();
    let mut state = HotplugState::new(&uefi);
    let mut hp = Hotplugger::new(&fake.qmp, uefi.arch.as_mut(), &mut state);
    let plugged = hp.add_memory(256).unwrap();
    assert_eq!(plugged.id, "dimm0");
    assert_eq!(
        fake.names(),
        ["query-memory-devices", "object-add", "device_add"]
    );
}

#[test]
fn virtio_mem_resize_and_unplug() {
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 1);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let dev = MemoryDevice::virtio_mem("vmem0", MemoryBackend::ram("vmem0-mem", 1 << 30), 0);
    let plugged = hp.plug(dev, Placement::Auto).unwrap();
    assert!(plugged.virtio_mem);
    hp.resize_virtio_mem("vmem0", 256 << 20).unwrap();
    hp.unplug("vmem0", T).unwrap();
    assert_eq!(
        fake.take(),
        [
            ("query-pci".into(), json!({})),
            (
                "object-add".into(),
                json!({"qom-type": "memory-backend-ram", "id": "vmem0-mem", "size": 1073741824})
            ),
            (
                "device_add".into(),
                json!({"driver": "virtio-mem-pci", "id": "vmem0", "memdev": "vmem0-mem",
                       "requested-size": 0, "bus": "rp0"})
            ),
            (
                "qom-set".into(),
                json!({"path": "/machine/peripheral/vmem0", "property": "requested-size",
                       "value": 268435456})
            ),
            (
                "qom-set".into(),
                json!({"path": "/machine/peripheral/vmem0", "property": "requested-size",
                       "value": 0})
            ),
            ("device_del".into(), json!({"id": "vmem0"})),
            ("object-del".into(), json!({"id": "vmem0-mem"})),
        ]
    );
}

#[test]
fn balloon_sets_the_target() {
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    hp.balloon(512 << 20).unwrap();
    assert_eq!(
        fake.take(),
        [("balloon".into(), json!({"value": 536870912}))]
    );
}

#[test]
fn unplug_timeout_keeps_the_device_and_its_slot() {
    let fake = Fake::new(|name, _args, _| match name {
        "device_del" => Answer::Silent,
        _ => Answer::Ok(json!({})),
    });
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    hp.add_block(&drive("d0"), BlockDriver::VirtioBlk, Placement::Bridge)
        .unwrap();
    fake.take();
    let err = hp
        .unplug("virtio-d0", Duration::from_millis(200))
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("hotplug step `device_del virtio-d0` failed: QMP timeout"),
        "{err}"
    );
    assert_eq!(fake.names(), ["device_del"]);
    assert_eq!(hp.state().plugged_ids(), ["virtio-d0"]);
    // The slot is still taken.
    let next = hp
        .add_block(&drive("d1"), BlockDriver::VirtioBlk, Placement::Bridge)
        .unwrap();
    assert_eq!(next.pci_path.unwrap().to_string(), "02/02");
}

#[test]
fn saved_hotplug_round_trips_and_cold_plugs_into_the_restored_config() {
    use hvarch::hotplug::SavedHotplug;
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 2);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    hp.add_block(&drive("drive0"), BlockDriver::VirtioBlk, Placement::Auto)
        .unwrap();
    hp.add_vfio(&vfio("vfio0"), Placement::Bridge).unwrap();
    hp.add_vfio(&vfio("gpu0"), Placement::RootBus).unwrap();
    let saved = SavedHotplug::capture(&state, vm.arch.as_ref()).unwrap();
    let text = saved.to_json().unwrap();
    let loaded = SavedHotplug::from_json(&text).unwrap();
    assert_eq!(
        loaded.to_json().unwrap(),
        text,
        "stable through a round trip"
    );
    let before: Vec<_> = state.plugged_in_order().cloned().collect();
    let after: Vec<_> = loaded.state.plugged_in_order().cloned().collect();
    assert_eq!(before, after);
    assert_eq!(
        after.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["virtio-drive0", "vfio0", "gpu0"],
        "plug order"
    );
    assert_eq!(loaded.bridges, *vm.arch.get_bridges());
    // The devices as plugged: final bus and addr (the root-bus device at QEMU's slot 5).
    let device_json = |id: &str| serde_json::to_value(&state.plugged(id).unwrap().device).unwrap();
    assert_eq!(device_json("virtio-drive0")["bus"], "rp0");
    assert_eq!(device_json("vfio0")["bus"], "pci-bridge-0");
    assert_eq!(device_json("vfio0")["addr"], "01");
    assert_eq!(device_json("gpu0")["addr"], "05");

    // Applied to the same spec assembled afresh: cold-plugged in plug order, bridges taken.
    let (mut fresh, _) = new_vm(GuestArch::Aarch64, 2);
    let cold = fresh.config.devices.len();
    let mut restored = loaded.apply(&mut fresh).unwrap();
    let added: Vec<_> = fresh.config.devices[cold..].to_vec();
    assert_eq!(
        added,
        before.iter().map(|p| p.device.clone()).collect::<Vec<_>>()
    );
    assert_eq!(*fresh.arch.get_bridges(), saved.bridges);
    assert_eq!(restored.free_root_ports(), ["rp1"]);
    fake.take();
    let mut hp = Hotplugger::new(&fake.qmp, fresh.arch.as_mut(), &mut restored);
    hp.unplug("vfio0", T).unwrap();
    hp.unplug("virtio-drive0", T).unwrap();
    assert_eq!(
        fake.names(),
        ["device_del", "device_del", "blockdev-del"],
        "the restored state knows how to remove them"
    );
    assert!(fresh
        .arch
        .get_bridges()
        .iter()
        .all(|b| b.devices.is_empty()));
    assert_eq!(restored.free_root_ports(), ["rp0", "rp1"]);
}

#[test]
fn saved_hotplug_refuses_owned_fds_and_a_different_vm() {
    use hvarch::hotplug::SavedHotplug;
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 2);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    hp.add_network(&endpoint(), Placement::Auto).unwrap();
    let err = SavedHotplug::capture(&state, vm.arch.as_ref()).unwrap_err();
    assert!(
        matches!(err, HotplugError::OwnedFds { count: 4, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("cannot save the hotplug state: virtio-net virtio-tap0 holds 4 owned"),
        "{err}"
    );
    assert!(serde_json::to_string(&state).is_err(), "no silent skip");

    // A state saved with two root ports does not fit a VM with one.
    let (vm, state) = new_vm(GuestArch::Aarch64, 2);
    let saved = SavedHotplug::capture(&state, vm.arch.as_ref()).unwrap();
    let (mut other, _) = new_vm(GuestArch::Aarch64, 1);
    let err = saved.apply(&mut other).unwrap_err();
    assert!(err.to_string().contains("root ports"), "{err}");
    let err = SavedHotplug::from_json(r#"{"version": 2, "bridges": [], "state": {}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot parse") || err.contains("version 2"),
        "{err}"
    );
}

/// A tap endpoint with two queues and no vhost descriptors (s390x never uses vhost-net).
fn endpoint_without_vhost() -> NetEndpoint {
    NetEndpoint {
        vhost_fds: Vec::new(),
        ..endpoint()
    }
}

#[test]
fn s390x_block_and_network_are_numbered_from_the_ccw_bridge() {
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::S390x, 0);
    // serial0, scsi0 and rng0-dev took fe.0.0001 to fe.0.0003 at assembly.
    assert_eq!(
        vm.arch.get_bridges().iter().next().unwrap().devices.len(),
        3
    );
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let disk = hp
        .add_block(&drive("drive0"), BlockDriver::VirtioBlk, Placement::Auto)
        .unwrap();
    assert_eq!(disk.pci_path, None);
    assert_eq!(disk.ccw_address().as_deref(), Some("0.0.0004"));
    let Location::Bridge(slot) = &disk.location else {
        panic!("{:?}", disk.location);
    };
    assert_eq!((slot.bridge_id.as_str(), slot.slot), ("ccw-bridge-0", 4));
    assert_eq!(
        fake.take(),
        [
            ("blockdev-add".into(), blockdev_add("drive0")),
            (
                "device_add".into(),
                json!({"driver": "virtio-blk-ccw", "id": "virtio-drive0", "drive": "drive0",
                       "share-rw": true, "devno": "fe.0.0004"})
            ),
        ]
    );
    // Kata 1.x numbered a hot-plugged NIC `fe.0.30303035` from a PCI slot's text: here the
    // CCW bridge's next slot gives fe.0.0005, and there is no vhost-net on s390x.
    let nic = hp
        .add_network(&endpoint_without_vhost(), Placement::Auto)
        .unwrap();
    assert_eq!(nic.ccw_address().as_deref(), Some("0.0.0005"));
    let mut expected: Vec<(String, Value)> = getfds().into_iter().take(2).collect();
    expected.push((
        "netdev_add".into(),
        json!({"type": "tap", "id": "tap0", "fds": "virtio-tap0-fd0:virtio-tap0-fd1"}),
    ));
    expected.push((
        "device_add".into(),
        json!({"driver": "virtio-net-ccw", "id": "virtio-tap0", "netdev": "tap0",
               "mac": "52:54:00:12:34:56", "mq": true, "devno": "fe.0.0005"}),
    ));
    assert_eq!(fake.take(), expected);
    // Unplugged, the disk's number is the next one given.
    hp.unplug("virtio-drive0", T).unwrap();
    assert_eq!(fake.names(), ["device_del", "blockdev-del"]);
    let again = hp
        .add_block(&drive("drive1"), BlockDriver::VirtioBlkCcw, Placement::Auto)
        .unwrap();
    assert_eq!(again.ccw_address().as_deref(), Some("0.0.0004"));
    assert_eq!(fake.take()[1].1["devno"], "fe.0.0004");
    // No PCIe root ports on s390x.
    assert!(matches!(
        hp.add_block(
            &drive("drive2"),
            BlockDriver::VirtioBlk,
            Placement::RootPort
        ),
        Err(HotplugError::Placement { .. })
    ));
    assert!(fake.take().is_empty());
}

#[test]
fn a_refused_ccw_device_frees_its_number() {
    let fake = Fake::new(qemu_like(Some(("device_add", 1))));
    let (mut vm, mut state) = new_vm(GuestArch::S390x, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    hp.add_block(&drive("drive0"), BlockDriver::VirtioBlkCcw, Placement::Auto)
        .unwrap_err();
    assert_eq!(fake.names(), ["blockdev-add", "device_add", "blockdev-del"]);
    let plugged = hp
        .add_block(&drive("drive1"), BlockDriver::VirtioBlkCcw, Placement::Auto)
        .unwrap();
    assert_eq!(plugged.ccw_address().as_deref(), Some("0.0.0004"));
}

#[test]
fn virtio_blk_ccw_needs_a_ccw_bridge() {
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let err = hp
        .add_block(&drive("drive0"), BlockDriver::VirtioBlkCcw, Placement::Auto)
        .unwrap_err();
    assert!(
        err.to_string().contains("no more bridge slots available"),
        "{err}"
    );
    assert!(fake.take().is_empty());
}

#[test]
fn pseries_hotplugs_on_its_pci_bridge() {
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::Ppc64le, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let disk = hp
        .add_block(&drive("drive0"), BlockDriver::VirtioBlk, Placement::Auto)
        .unwrap();
    assert_eq!(disk.ccw_address(), None);
    assert_eq!(disk.pci_path.unwrap().to_string(), "02/01");
    assert_eq!(
        fake.take()[1],
        (
            "device_add".into(),
            json!({"driver": "virtio-blk-pci", "id": "virtio-drive0", "drive": "drive0",
                   "bus": "pci-bridge-0", "addr": "01", "share-rw": true})
        )
    );
}

#[test]
fn nvdimm_block_hotplug() {
    let dir = std::env::temp_dir().join(format!("hvarch-nvdimm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("pmem.img");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(2 << 20))
        .expect("image");
    let fake = Fake::new(qemu_like(None));
    let (mut vm, mut state) = new_vm(GuestArch::X86_64, 0);
    let mut hp = Hotplugger::new(&fake.qmp, vm.arch.as_mut(), &mut state);
    let mut pmem = drive("pmem0");
    pmem.file = file.clone();
    let plugged = hp
        .add_block(&pmem, BlockDriver::Nvdimm, Placement::Auto)
        .unwrap();
    assert_eq!(plugged.id, "nvdimmpmem0");
    assert_eq!(plugged.location, Location::AsGiven);
    let path = file.to_str().expect("utf-8 temp path");
    assert_eq!(
        fake.take(),
        [
            (
                "object-add".into(),
                json!({"qom-type": "memory-backend-file", "id": "nvdimmbackmempmem0",
                       "size": 2 << 20, "mem-path": path, "share": true})
            ),
            (
                "device_add".into(),
                json!({"driver": "nvdimm", "id": "nvdimmpmem0",
                       "memdev": "nvdimmbackmempmem0"})
            ),
        ]
    );
    // A read-only drive is mapped read-only, and the NVDIMM disarmed.
    let mut ro = pmem.clone();
    ro.id = "pmem1".into();
    ro.read_only = true;
    hp.add_block(&ro, BlockDriver::Nvdimm, Placement::Auto)
        .unwrap();
    let log = fake.take();
    assert_eq!(log[0].1["readonly"], true);
    assert_eq!(log[1].1["unarmed"], true);
    // A missing file: nothing is sent.
    let mut missing = pmem;
    missing.id = "pmem2".into();
    missing.file = dir.join("missing.img");
    let err = hp
        .add_block(&missing, BlockDriver::Nvdimm, Placement::Auto)
        .unwrap_err();
    assert!(err.to_string().contains("missing.img"), "{err}");
    assert!(fake.take().is_empty());
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
}
