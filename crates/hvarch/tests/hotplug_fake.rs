//! The hotplug engine and Kata's flows against a fake QEMU: the exact command sequence (names
//! and JSON arguments) of every flow, including those this machine cannot run for real (VFIO,
//! vhost-user-blk, network with tap and vhost descriptors), the exact undo sequence when a
//! step is refused or times out, pending removals and how they complete, and the slots.
//!
//! Every scenario runs three times (see `support`): on the engine alone (a scripted driver,
//! no socket), on the blocking driver and on the tokio driver (feature `tokio`), both against
//! the fake QMP server.

mod support;

use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::Duration;

use hvarch::hotplug::{HotplugError, HotplugState, Location, Placement, SavedHotplug};
use hvarch::hvarch_arch::resources::{
    BlockDrive, EndpointKind, InterworkingModel, NetEndpoint, VfioDev, VhostUserDevice,
    VhostUserKind,
};
use hvarch::hvarch_arch::settings::BlockDriver;
use hvarch::hvarch_devices::fd::SharedFd;
use hvarch::hvarch_devices::memory::{MemoryBackend, MemoryDevice};
use hvarch::hvarch_devices::QemuDevice;
use hvarch::{assemble, Accelerator, Assembled, GuestArch, VmSpec};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{json, Value};
use support::{durations, scenarios, Answer};

/// Answers like QEMU with Kata's default arm64 devices and root ports on `pcie.0` (the
/// bridge at 02, rp0 at 05, rp1 at 06, as the configuration places them) and a vfio device
/// on the root bus at 07; `device_del` releases at once; `refuse` names a command (and
/// optionally its n-th occurrence) to refuse.
fn qemu_like(refuse: Option<(&'static str, usize)>) -> impl FnMut(&str, &Value, usize) -> Answer {
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
                {"bus": 0, "slot": 5, "function": 0, "qdev_id": "rp0"},
                {"bus": 0, "slot": 6, "function": 0, "qdev_id": "rp1"},
                {"bus": 0, "slot": 7, "function": 0, "qdev_id": "gpu0"},
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

fn device_add_on_bridge(drive: &str, slot: &str) -> Value {
    json!({"driver": "virtio-blk-pci", "id": format!("virtio-{drive}"), "drive": drive,
           "bus": "pci-bridge-0", "addr": slot, "share-rw": true})
}

fn dev_null() -> SharedFd {
    SharedFd::new(OwnedFd::from(
        std::fs::File::open("/dev/null").expect("open /dev/null"),
    ))
}

/// The slots of the bridge `pci-bridge-0` and the ids holding them.
fn bridge_slots(vm: &Assembled) -> Vec<(u32, String)> {
    vm.arch
        .get_bridges()
        .iter()
        .flat_map(|b| b.devices.iter().map(|(slot, id)| (*slot, id.clone())))
        .collect()
}

/// A fake QEMU whose `device_add` of `virtio-drive0` gets no reply the first time, and
/// whose `device_del` is never confirmed the first time (a guest that does not answer the
/// attention button); `balloon` brings the late `DEVICE_DELETED` of `virtio-drive0` first.
fn unanswered_first(
    name: &str,
    args: &Value,
    n: usize,
    adds: &mut usize,
    dels: &mut usize,
) -> Answer {
    let id = args["id"].as_str().unwrap_or_default();
    match name {
        "device_add" if id == "virtio-drive0" => {
            *adds += 1;
            if *adds == 1 {
                Answer::NoReply
            } else {
                Answer::Ok(json!({}))
            }
        }
        "device_del" if id == "virtio-drive0" => {
            *dels += 1;
            if *dels == 1 {
                Answer::Silent
            } else {
                Answer::Deleted
            }
        }
        "balloon" => Answer::DeletedFirst("virtio-drive0", Box::new(Answer::Ok(json!({})))),
        _ => qemu_like(None)(name, args, n),
    }
}

fn unanswered_first_rule() -> impl FnMut(&str, &Value, usize) -> Answer {
    let (mut adds, mut dels) = (0, 0);
    move |name, args, n| unanswered_first(name, args, n, &mut adds, &mut dels)
}

/// `finish(hp.add_block(&drive(id), VirtioBlk, Placement::placement))`.
macro_rules! add_blk {
    ($hp:expr, $id:literal, $placement:ident) => {
        finish($hp.add_block(&drive($id), BlockDriver::VirtioBlk, Placement::$placement))
    };
}

/// The short waits of the scenarios that time out (the fake answers at once otherwise).
const SHORT: Duration = Duration::from_millis(300);
const T: Duration = Duration::from_secs(2);

fn vhost_user_blk() -> VhostUserDevice {
    VhostUserDevice {
        kind: VhostUserKind::Blk,
        socket_path: "/run/vhost/blk0.sock".into(),
        dev_id: "blk0".into(),
        mac: None,
        tag: None,
    }
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

/// A tap endpoint with two queues and no vhost descriptors (s390x never uses vhost-net).
fn endpoint_without_vhost() -> NetEndpoint {
    NetEndpoint {
        vhost_fds: Vec::new(),
        ..endpoint()
    }
}

scenarios! {
    fn virtio_blk_on_a_root_port_and_back() {
        let (mut fake, log) = Fake::logged(qemu_like(None));
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 2);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let plugged = add_blk!(hp, "drive0", Auto)
            .unwrap();
        assert_eq!(plugged.id, "virtio-drive0");
        // The port's slot comes from the configuration: no query-pci.
        assert_eq!(plugged.pci_path.as_ref().unwrap().to_string(), "05/00");
        assert_eq!(plugged.location, Location::RootPort { port: "rp0".into() });
        assert_eq!(
            log.take(),
            [
                ("blockdev-add".into(), blockdev_add("drive0")),
                (
                    "device_add".into(),
                    json!({"driver": "virtio-blk-pci", "id": "virtio-drive0", "drive": "drive0",
                           "bus": "rp0", "share-rw": true})
                ),
            ]
        );
        assert_eq!(hp.state().free_root_ports(), ["rp1"]);
        finish(hp.unplug("virtio-drive0", T)).unwrap();
        assert_eq!(
            log.take(),
            [
                ("device_del".into(), json!({"id": "virtio-drive0"})),
                ("blockdev-del".into(), json!({"node-name": "drive0"})),
            ]
        );
        assert_eq!(hp.state().free_root_ports(), ["rp0", "rp1"]);
        assert!(hp.state().plugged_ids().is_empty());
        assert!(matches!(
            finish(hp.unplug("virtio-drive0", T)),
            Err(HotplugError::NotPlugged { .. })
        ));
        assert!(log.take().is_empty());
    }

    fn a_root_port_slot_the_configuration_does_not_determine_is_asked_once() {
        let (mut fake, log) = Fake::logged(qemu_like(None));
        let (mut vm, _) = new_vm(GuestArch::Aarch64, 2);
        // QEMU's default devices would take root-bus slots hvarch cannot know of.
        vm.config.knobs.nodefaults = false;
        let mut state = HotplugState::new(&vm);
        assert_eq!(state.root_port_slot("rp0"), None);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let first = add_blk!(hp, "d0", Auto)
            .unwrap();
        assert_eq!(first.pci_path.unwrap().to_string(), "05/00");
        assert_eq!(log.names(), ["query-pci", "blockdev-add", "device_add"]);
        let second = add_blk!(hp, "d1", Auto)
            .unwrap();
        assert_eq!(second.pci_path.unwrap().to_string(), "06/00");
        assert_eq!(log.names(), ["blockdev-add", "device_add"], "remembered");
        assert_eq!(hp.state().root_port_slot("rp1"), Some(6));
    }

    fn virtio_blk_on_a_bridge_slot_rollback_frees_the_slot() {
        // device_add refused the first time only.
        let (mut fake, log) = Fake::logged(qemu_like(Some(("device_add", 1))));
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let err = add_blk!(hp, "drive0", Auto)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("hotplug step `device_add virtio-drive0` failed"),
            "{err}"
        );
        assert_eq!(
            log.take(),
            [
                ("blockdev-add".into(), blockdev_add("drive0")),
                ("device_add".into(), device_add_on_bridge("drive0", "01")),
                ("blockdev-del".into(), json!({"node-name": "drive0"})),
            ]
        );
        assert!(hp.state().plugged_ids().is_empty());
        // The slot was freed: the next device gets slot 1 again.
        let plugged = add_blk!(hp, "drive1", Bridge)
            .unwrap();
        assert_eq!(plugged.pci_path.unwrap().to_string(), "02/01");
        assert_eq!(log.take()[1].1, device_add_on_bridge("drive1", "01"));
        // A second one takes slot 2.
        let second = add_blk!(hp, "drive2", Bridge)
            .unwrap();
        assert_eq!(second.pci_path.unwrap().to_string(), "02/02");
        log.take();
        finish(hp.unplug("virtio-drive1", T)).unwrap();
        assert_eq!(log.names(), ["device_del", "blockdev-del"]);
        let third = add_blk!(hp, "drive3", Bridge)
            .unwrap();
        assert_eq!(third.pci_path.unwrap().to_string(), "02/01");
    }

    fn a_timed_out_device_add_is_undone_too() {
        // device_add never answered: QEMU may still create the device, so the rollback deletes
        // it as well as the backend. Here the device_del is confirmed: the slot is free again.
        let rule = |name: &str, args: &Value, n: usize| match name {
            "device_add" if args["id"] == "virtio-drive0" => Answer::NoReply,
            _ => qemu_like(None)(name, args, n),
        };
        let mut fake = Fake::with_timeout(rule, SHORT);
        let log = fake.log();
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let err = add_blk!(hp, "drive0", Bridge)
            .unwrap_err();
        assert!(err.to_string().contains("device_add virtio-drive0"), "{err}");
        assert_eq!(
            log.names(),
            ["blockdev-add", "device_add", "device_del", "blockdev-del"]
        );
        assert!(hp.state().pending_removal_ids().is_empty());
        let next = add_blk!(hp, "drive1", Bridge)
            .unwrap();
        assert_eq!(next.pci_path.unwrap().to_string(), "02/01");
    }

    fn an_unconfirmed_rollback_is_a_pending_removal_completed_by_the_late_event() {
        let mut fake = Fake::with_timeout(unanswered_first_rule(), SHORT);
        let log = fake.log();
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state).rollback_timeout(SHORT);
        let err = add_blk!(hp, "drive0", Bridge)
            .unwrap_err();
        assert!(err.to_string().contains("device_add virtio-drive0"), "{err}");
        // The undo stops at the unconfirmed device_del: the node is still in use.
        assert_eq!(
            log.take(),
            [
                ("blockdev-add".into(), blockdev_add("drive0")),
                ("device_add".into(), device_add_on_bridge("drive0", "01")),
                ("device_del".into(), json!({"id": "virtio-drive0"})),
            ]
        );
        let pending = hp.state().pending_removal("virtio-drive0").expect("pending").clone();
        let left: Vec<&str> = pending.backend_removals().map(|c| c.command).collect();
        assert_eq!(left, ["blockdev-del"]);
        assert!(hp.state().plugged_ids().is_empty());
        // The same drive again: refused at once, nothing sent (not "Duplicate nodes").
        assert!(matches!(
            add_blk!(hp, "drive0", Bridge),
            Err(HotplugError::RemovalPending { id }) if id == "virtio-drive0"
        ));
        assert!(log.take().is_empty());
        // Its slot stays taken: another drive gets slot 2.
        let other = add_blk!(hp, "drive1", Bridge)
            .unwrap();
        assert_eq!(other.pci_path.unwrap().to_string(), "02/02");
        log.take();
        // The guest answers late; the event is noticed by the next call, which completes the
        // removal (blockdev-del, slot freed) before it plugs the drive again into slot 1.
        finish(hp.balloon(1 << 30)).unwrap();
        assert_eq!(log.names(), ["balloon"]);
        let again = add_blk!(hp, "drive0", Bridge)
            .unwrap();
        assert_eq!(again.pci_path.unwrap().to_string(), "02/01");
        assert_eq!(
            log.take(),
            [
                ("blockdev-del".into(), json!({"node-name": "drive0"})),
                ("blockdev-add".into(), blockdev_add("drive0")),
                ("device_add".into(), device_add_on_bridge("drive0", "01")),
            ]
        );
        assert!(hp.state().pending_removal_ids().is_empty());
        assert_eq!(
            bridge_slots(&vm),
            [(1, "virtio-drive0".to_owned()), (2, "virtio-drive1".to_owned())]
        );
    }

    fn a_pending_removal_is_completed_by_a_later_unplug() {
        let mut fake = Fake::with_timeout(unanswered_first_rule(), SHORT);
        let log = fake.log();
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state).rollback_timeout(SHORT);
        add_blk!(hp, "drive0", Bridge)
            .unwrap_err();
        assert_eq!(hp.state().pending_removal_ids(), ["virtio-drive0"]);
        log.take();
        finish(hp.unplug("virtio-drive0", T)).unwrap();
        assert_eq!(
            log.take(),
            [
                ("device_del".into(), json!({"id": "virtio-drive0"})),
                ("blockdev-del".into(), json!({"node-name": "drive0"})),
            ]
        );
        assert!(hp.state().pending_removal_ids().is_empty());
        assert!(bridge_slots(&vm).is_empty(), "slot freed");
    }

    fn a_device_already_being_unplugged_stays_pending() {
        // QEMU refuses a second device_del while the first is unanswered (guest time frozen).
        let rule = |name: &str, args: &Value, n: usize| match name {
            "device_del" if n >= 3 => {
                Answer::Refuse("Device virtio-drive0 is already in the process of unplug")
            }
            "device_del" => Answer::Silent,
            _ => qemu_like(None)(name, args, n),
        };
        let (mut fake, log) = Fake::logged(rule);
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 1);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        add_blk!(hp, "drive0", Auto).unwrap();
        let err = finish(hp.unplug("virtio-drive0", SHORT)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("hotplug step `device_del virtio-drive0` failed: QMP timeout"),
            "{err}"
        );
        assert_eq!(hp.state().pending_removal_ids(), ["virtio-drive0"]);
        let err = finish(hp.unplug("virtio-drive0", SHORT)).unwrap_err();
        assert!(err.to_string().contains("in the process of unplug"), "{err}");
        assert_eq!(hp.state().pending_removal_ids(), ["virtio-drive0"]);
        assert!(hp.state().free_root_ports().is_empty(), "the port stays reserved");
        assert_eq!(log.names(), ["blockdev-add", "device_add", "device_del", "device_del"]);
    }

    fn a_refused_unplug_leaves_the_device_plugged() {
        let rule = |name: &str, args: &Value, n: usize| match name {
            "device_del" => Answer::Refuse("acpi: device unplug request for not supported device"),
            _ => qemu_like(None)(name, args, n),
        };
        let mut fake = Fake::new(rule);
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        add_blk!(hp, "d0", Bridge).unwrap();
        assert!(finish(hp.unplug("virtio-d0", T)).is_err());
        assert_eq!(hp.state().plugged_ids(), ["virtio-d0"]);
        assert!(hp.state().pending_removal_ids().is_empty());
    }

    fn an_unplug_that_times_out_is_a_pending_removal_with_its_slot() {
        let rule = |name: &str, args: &Value, n: usize| match name {
            "device_del" => Answer::Silent,
            "balloon" => Answer::DeletedFirst("virtio-d0", Box::new(Answer::Ok(json!({})))),
            _ => qemu_like(None)(name, args, n),
        };
        let (mut fake, log) = Fake::logged(rule);
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        add_blk!(hp, "d0", Bridge).unwrap();
        log.take();
        let err = finish(hp.unplug("virtio-d0", SHORT)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("hotplug step `device_del virtio-d0` failed: QMP timeout"),
            "{err}"
        );
        assert_eq!(log.names(), ["device_del"]);
        assert!(hp.state().plugged_ids().is_empty());
        assert_eq!(hp.state().pending_removal_ids(), ["virtio-d0"]);
        // The slot is still taken.
        let next = add_blk!(hp, "d1", Bridge)
            .unwrap();
        assert_eq!(next.pci_path.unwrap().to_string(), "02/02");
        log.take();
        // The late event completes it at the next call.
        finish(hp.balloon(1 << 30)).unwrap();
        finish(hp.balloon(1 << 30)).unwrap();
        assert_eq!(log.names(), ["balloon", "blockdev-del", "balloon"]);
        assert!(hp.state().pending_removal_ids().is_empty());
    }

    fn reconcile_completes_what_qemu_no_longer_has() {
        let listing = |ids: &[&str]| {
            let mut props = vec![json!({"name": "type", "type": "string"})];
            props.extend(ids.iter().map(|id| json!({"name": id, "type": "child<virtio-blk-pci>"})));
            Value::Array(props)
        };
        let (mut adds, mut dels) = (0, 0);
        let mut reconciles = 0;
        let rule = move |name: &str, args: &Value, n: usize| match name {
            "qom-list" => {
                reconciles += 1;
                match reconciles {
                    1 => Answer::Ok(listing(&["virtio-drive0", "virtio-drive1"])),
                    _ => Answer::Ok(listing(&[])),
                }
            }
            "query-named-block-nodes" => Answer::Ok(json!([{"node-name": "drive1"}])),
            _ => unanswered_first(name, args, n, &mut adds, &mut dels),
        };
        let mut fake = Fake::with_timeout(rule, SHORT);
        let log = fake.log();
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state).rollback_timeout(SHORT);
        // Nothing known: nothing asked.
        assert_eq!(finish(hp.reconcile()).unwrap(), Vec::<String>::new());
        assert!(log.take().is_empty());
        add_blk!(hp, "drive0", Bridge)
            .unwrap_err();
        add_blk!(hp, "drive1", Bridge).unwrap();
        log.take();
        // QEMU still has both.
        assert!(finish(hp.reconcile()).unwrap().is_empty());
        assert_eq!(log.take(), [("qom-list".into(), json!({"path": "/machine/peripheral"}))]);
        assert_eq!(hp.state().pending_removal_ids(), ["virtio-drive0"]);
        // Both gone (the event was missed; the guest ejected the other): drive1's node is
        // still there and removed, drive0's is not (nothing to remove).
        let mut done = finish(hp.reconcile()).unwrap();
        done.sort();
        assert_eq!(done, ["virtio-drive0", "virtio-drive1"]);
        assert_eq!(
            log.take(),
            [
                ("qom-list".into(), json!({"path": "/machine/peripheral"})),
                ("query-named-block-nodes".into(), json!({"flat": true})),
                ("blockdev-del".into(), json!({"node-name": "drive1"})),
            ]
        );
        assert!(hp.state().pending_removal_ids().is_empty());
        assert!(hp.state().plugged_ids().is_empty());
        assert!(bridge_slots(&vm).is_empty());
    }

    fn a_backend_still_in_use_keeps_what_is_left_pending() {
        // QEMU dropped the device from its tree but still finalizes it: the node is in use
        // for a moment. The record keeps the node (not the device) until a later call.
        let mut busy = 0;
        let rule = move |name: &str, args: &Value, n: usize| match name {
            "qom-list" => Answer::Ok(json!([{"name": "type", "type": "string"}])),
            "query-named-block-nodes" => Answer::Ok(json!([{"node-name": "drive1"}])),
            "blockdev-del" => {
                busy += 1;
                if busy == 1 {
                    Answer::Refuse("Node drive1 is in use")
                } else {
                    Answer::Ok(json!({}))
                }
            }
            _ => qemu_like(None)(name, args, n),
        };
        let (mut fake, log) = Fake::logged(rule);
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 1);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        add_blk!(hp, "drive1", Auto).unwrap();
        let err = finish(hp.reconcile()).unwrap_err();
        assert!(err.to_string().contains("blockdev-del drive1"), "{err}");
        let left = hp.state().pending_removal("virtio-drive1").expect("pending").clone();
        assert!(!left.holds_device());
        assert_eq!(left.removal.iter().map(|c| c.command).collect::<Vec<_>>(), ["blockdev-del"]);
        assert!(hp.state().free_root_ports().is_empty(), "the port waits for the node");
        assert!(matches!(
            add_blk!(hp, "drive1", Auto),
            Err(HotplugError::RemovalPending { .. })
        ));
        // A later unplug of the id retries what is left, with no device_del.
        finish(hp.unplug("virtio-drive1", T)).unwrap();
        assert_eq!(
            log.names(),
            [
                "blockdev-add",
                "device_add",
                "qom-list",
                "query-named-block-nodes",
                "blockdev-del",
                "blockdev-del"
            ]
        );
        assert!(hp.state().pending_removal_ids().is_empty());
        assert_eq!(hp.state().free_root_ports(), ["rp0"]);
    }

    fn no_root_port_left_is_a_placement_error_without_commands() {
        let (mut fake, log) = Fake::logged(qemu_like(None));
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 1);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        add_blk!(hp, "a", RootPort).unwrap();
        log.take();
        let err = add_blk!(hp, "b", RootPort)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot place virtio-blk virtio-b: all 1 PCIe root ports are in use"
        );
        assert!(log.take().is_empty());
        // Auto falls back to the bridge.
        let plugged = add_blk!(hp, "b", Auto)
            .unwrap();
        assert!(matches!(plugged.location, Location::Bridge(_)));
        assert!(matches!(
            add_blk!(hp, "b", Auto),
            Err(HotplugError::AlreadyPlugged { .. })
        ));
    }

    fn virtio_scsi_disk_gets_scsi_id_and_lun_from_the_index() {
        let (mut fake, log) = Fake::logged(qemu_like(None));
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let mut d = drive("drive7");
        d.index = 300;
        let plugged = finish(hp.add_block(&d, BlockDriver::VirtioScsi, Placement::Auto)).unwrap();
        assert_eq!(plugged.pci_path, None);
        assert_eq!(
            log.take(),
            [
                ("blockdev-add".into(), blockdev_add("drive7")),
                (
                    "device_add".into(),
                    json!({"driver": "scsi-hd", "id": "virtio-drive7", "drive": "drive7",
                           "bus": "scsi0.0", "scsi-id": 1, "lun": 44, "share-rw": true})
                ),
            ]
        );
        finish(hp.unplug("virtio-drive7", T)).unwrap();
        assert_eq!(log.names(), ["device_del", "blockdev-del"]);
    }

    fn vhost_user_blk_chardev_then_device_and_rollback() {
        let (mut fake, log) = Fake::logged(qemu_like(Some(("device_add", 1))));
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let chardev_add = json!({"id": "char-blk0", "backend": {"type": "socket", "data": {
            "addr": {"type": "unix", "data": {"path": "/run/vhost/blk0.sock"}}}}});
        let device_add = json!({"driver": "vhost-user-blk-pci", "id": "virtio-blk0",
            "chardev": "char-blk0", "bus": "pci-bridge-0", "addr": "01"});
        assert!(finish(hp.add_vhost_user(&vhost_user_blk(), Placement::Bridge)).is_err());
        assert_eq!(
            log.take(),
            [
                ("chardev-add".into(), chardev_add.clone()),
                ("device_add".into(), device_add.clone()),
                ("chardev-remove".into(), json!({"id": "char-blk0"})),
            ]
        );
        let plugged = finish(hp.add_vhost_user(&vhost_user_blk(), Placement::Bridge)).unwrap();
        assert_eq!(plugged.pci_path.unwrap().to_string(), "02/01");
        assert_eq!(
            log.take(),
            [
                ("chardev-add".into(), chardev_add),
                ("device_add".into(), device_add),
            ]
        );
        finish(hp.unplug("virtio-blk0", T)).unwrap();
        assert_eq!(
            log.take(),
            [
                ("device_del".into(), json!({"id": "virtio-blk0"})),
                ("chardev-remove".into(), json!({"id": "char-blk0"})),
            ]
        );
        let mut fs = vhost_user_blk();
        fs.kind = VhostUserKind::Fs;
        assert!(matches!(
            finish(hp.add_vhost_user(&fs, Placement::Auto)),
            Err(HotplugError::Invalid { .. })
        ));
        assert!(log.take().is_empty());
    }

    fn vfio_on_a_bridge_slot_or_the_root_bus() {
        let (mut fake, log) = Fake::logged(qemu_like(None));
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let plugged = finish(hp.add_vfio(&vfio("vfio0"), Placement::Bridge)).unwrap();
        assert_eq!(plugged.pci_path.unwrap().to_string(), "02/01");
        assert_eq!(
            log.take(),
            [(
                "device_add".into(),
                json!({"driver": "vfio-pci", "id": "vfio0", "host": "0000:02:00.0",
                       "bus": "pci-bridge-0", "addr": "01"})
            )]
        );
        // On the root bus QEMU picks the slot: query-pci reports it.
        let plugged = finish(hp.add_vfio(&vfio("gpu0"), Placement::RootBus)).unwrap();
        assert_eq!(plugged.pci_path.unwrap().to_string(), "07");
        assert_eq!(
            log.take(),
            [
                (
                    "device_add".into(),
                    json!({"driver": "vfio-pci", "id": "gpu0", "host": "0000:02:00.0"})
                ),
                ("query-pci".into(), json!({})),
            ]
        );
        finish(hp.unplug("vfio0", T)).unwrap();
        finish(hp.unplug("gpu0", T)).unwrap();
        assert_eq!(log.names(), ["device_del", "device_del"]);
    }

    fn network_with_tap_and_vhost_fds() {
        let (mut fake, log) = Fake::logged(qemu_like(None));
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 2);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let plugged = finish(hp.add_network(&endpoint(), Placement::Auto)).unwrap();
        assert_eq!(plugged.pci_path.unwrap().to_string(), "05/00");
        let mut expected = getfds();
        expected.push(("netdev_add".into(), netdev_add()));
        expected.push((
            "device_add".into(),
            json!({"driver": "virtio-net-pci", "id": "virtio-tap0", "netdev": "tap0",
                   "mac": "52:54:00:12:34:56", "bus": "rp0", "mq": true, "vectors": 6}),
        ));
        assert_eq!(log.take(), expected);
        assert_eq!(log.fds(), 4, "four descriptors passed");
        finish(hp.unplug("virtio-tap0", T)).unwrap();
        assert_eq!(
            log.take(),
            [
                ("device_del".into(), json!({"id": "virtio-tap0"})),
                ("netdev_del".into(), json!({"id": "tap0"})),
            ]
        );
    }

    fn network_rollbacks() {
        // netdev_add refused: the four descriptors QEMU received are closed, the port freed.
        let (mut fake, log) = Fake::logged(qemu_like(Some(("netdev_add", 1))));
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 1);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let err = finish(hp.add_network(&endpoint(), Placement::Auto)).unwrap_err();
        assert!(err.to_string().contains("`netdev_add tap0`"), "{err}");
        let mut expected = getfds();
        expected.push(("netdev_add".into(), netdev_add()));
        for i in 0..4 {
            expected.push((
                "closefd".into(),
                json!({"fdname": format!("virtio-tap0-fd{i}")}),
            ));
        }
        assert_eq!(log.take(), expected);
        assert_eq!(hp.state().free_root_ports(), ["rp0"]);

        // device_add refused: the netdev (which consumed the descriptors) is deleted.
        let (mut fake, log) = Fake::logged(qemu_like(Some(("device_add", 1))));
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        finish(hp.add_network(&endpoint(), Placement::Auto)).unwrap_err();
        let taken = log.take();
        let names: Vec<&str> = taken.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["getfd", "getfd", "getfd", "getfd", "netdev_add", "device_add", "netdev_del"]
        );
        assert_eq!(taken[6].1, json!({"id": "tap0"}));
        assert_eq!(hp.state().free_root_ports(), ["rp0"]);

        // The second getfd refused: the first descriptor is closed, nothing else was created.
        let (mut fake, log) = Fake::logged(qemu_like(Some(("getfd", 2))));
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let err = finish(hp.add_network(&endpoint(), Placement::Bridge)).unwrap_err();
        assert!(err.to_string().contains("`getfd virtio-tap0-fd1`"), "{err}");
        assert_eq!(
            log.take(),
            [
                ("getfd".into(), json!({"fdname": "virtio-tap0-fd0"})),
                ("getfd".into(), json!({"fdname": "virtio-tap0-fd1"})),
                ("closefd".into(), json!({"fdname": "virtio-tap0-fd0"})),
            ]
        );
        // The bridge slot was freed too.
        let plugged = finish(hp.add_vfio(&vfio("vfio0"), Placement::Bridge)).unwrap();
        assert_eq!(plugged.pci_path.unwrap().to_string(), "02/01");
    }

    fn cpus_added_from_free_slots_and_removed_last_first() {
        let mut fake = Fake::new(|name: &str, _args: &Value, _| match name {
            "query-hotpluggable-cpus" => Answer::Ok(hotpluggable_cpus()),
            "device_del" => Answer::Deleted,
            _ => Answer::Ok(json!({})),
        });
        let log = fake.log();
        let (mut vm, mut state) = new_vm(GuestArch::X86_64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        assert_eq!(finish(hp.add_cpus(2)).unwrap(), 2);
        assert_eq!(
            log.take(),
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
        assert_eq!(finish(hp.add_cpus(5)).unwrap(), 1);
        log.take();
        assert_eq!(finish(hp.add_cpus(1)).unwrap(), 0);
        assert!(log.take().is_empty());
        assert_eq!(finish(hp.remove_cpus(2, T)).unwrap(), 2);
        assert_eq!(
            log.take(),
            [
                ("device_del".into(), json!({"id": "cpu-2"})),
                ("device_del".into(), json!({"id": "cpu-1"})),
            ]
        );
        assert_eq!(hp.state().hotplugged_cpus(), ["cpu-0"]);
    }

    fn cpus_partial_and_unsupported() {
        // Every device_add but the first refused: one of two added.
        let mut fake = Fake::new(|name: &str, _args: &Value, n| match name {
            "query-hotpluggable-cpus" => Answer::Ok(hotpluggable_cpus()),
            "device_add" if n > 1 => Answer::Refuse("no"),
            _ => Answer::Ok(json!({})),
        });
        let (mut vm, mut state) = new_vm(GuestArch::X86_64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let err = finish(hp.add_cpus(2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to hot add vCPUs: only 1 vCPUs of 2 were added"
        );
        assert_eq!(hp.state().hotplugged_cpus(), ["cpu-0"]);

        let mut fake = Fake::new(|name: &str, _args: &Value, _| match name {
            "query-hotpluggable-cpus" => {
                Answer::Refuse("machine does not support hot-plugging CPUs")
            }
            _ => Answer::Ok(json!({})),
        });
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        match finish(hp.add_cpus(1)) {
            Err(HotplugError::CpuHotplugUnsupported { reason }) => {
                assert_eq!(reason, "machine does not support hot-plugging CPUs")
            }
            other => panic!("{other:?}"),
        }
    }

    fn memory_dimm_slot_after_the_highest_and_rollback() {
        let mut fake = Fake::new(|name: &str, _args: &Value, _| match name {
            "query-memory-devices" => Answer::Ok(json!([
                {"type": "dimm", "data": {"slot": 0, "id": "dimm0", "memdev": "/objects/mem0",
                 "addr": 4294967296u64, "size": 134217728, "node": 0, "hotplugged": true,
                 "hotpluggable": true}},
                {"type": "virtio-mem", "data": {"id": "vm0"}},
            ])),
            "device_add" => Answer::Refuse("pc-dimm refused"),
            _ => Answer::Ok(json!({})),
        });
        let log = fake.log();
        let (mut vm, mut state) = new_vm(GuestArch::X86_64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        assert!(finish(hp.add_memory(128)).is_err());
        assert_eq!(
            log.take(),
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

    fn memory_on_arm64_needs_uefi() {
        let (mut fake, log) = Fake::logged(qemu_like(None));
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let err = finish(hp.add_memory(128)).unwrap_err();
        assert!(matches!(err, HotplugError::MemoryHotplugUnsupported { .. }));
        assert!(err.to_string().contains("UEFI"), "{err}");
        assert!(log.take().is_empty());

        // With the UEFI pflash pair it goes ahead.
        let mut s = spec(GuestArch::Aarch64, 0);
        s.hypervisor.pflashes = vec!["/fw/AAVMF_CODE.fd".into(), "/fw/AAVMF_VARS.fd".into()];
        let mut uefi = assemble(&s).unwrap();
        let mut state = HotplugState::new(&uefi);
        let mut hp = fake.hotplugger(uefi.arch.as_mut(), &mut state);
        let plugged = finish(hp.add_memory(256)).unwrap();
        assert_eq!(plugged.id, "dimm0");
        assert_eq!(log.names(), ["query-memory-devices", "object-add", "device_add"]);
    }

    fn virtio_mem_resize_and_unplug() {
        let (mut fake, log) = Fake::logged(qemu_like(None));
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 1);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let dev = MemoryDevice::virtio_mem("vmem0", MemoryBackend::ram("vmem0-mem", 1 << 30), 0);
        let plugged = finish(hp.plug(dev, Placement::Auto)).unwrap();
        assert!(plugged.virtio_mem);
        finish(hp.resize_virtio_mem("vmem0", 256 << 20)).unwrap();
        finish(hp.unplug("vmem0", T)).unwrap();
        assert_eq!(
            log.take(),
            [
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

    fn balloon_sets_the_target() {
        let (mut fake, log) = Fake::logged(qemu_like(None));
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        finish(hp.balloon(512 << 20)).unwrap();
        assert_eq!(log.take(), [("balloon".into(), json!({"value": 536870912}))]);
    }

    fn saved_hotplug_round_trips_and_cold_plugs_into_the_restored_config() {
        let mut fake = Fake::with_timeout(unanswered_first_rule(), SHORT);
        let log = fake.log();
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 2);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state).rollback_timeout(SHORT);
        add_blk!(hp, "drive1", Auto).unwrap();
        finish(hp.add_vfio(&vfio("vfio0"), Placement::Bridge)).unwrap();
        // A pending removal: QEMU still has the device, so a restored VM must have it too.
        add_blk!(hp, "drive0", Bridge)
            .unwrap_err();
        finish(hp.add_vfio(&vfio("gpu0"), Placement::RootBus)).unwrap();
        assert_eq!(state.pending_removal_ids(), ["virtio-drive0"]);
        let saved = SavedHotplug::capture(&state, vm.arch.as_ref()).unwrap();
        let text = saved.to_json().unwrap();
        let loaded = SavedHotplug::from_json(&text).unwrap();
        assert_eq!(loaded.to_json().unwrap(), text, "stable through a round trip");
        let before: Vec<_> = state.plugged_in_order().cloned().collect();
        let after: Vec<_> = loaded.state.plugged_in_order().cloned().collect();
        assert_eq!(before, after);
        assert_eq!(
            after.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["virtio-drive1", "vfio0", "gpu0"],
            "plug order"
        );
        assert_eq!(
            loaded.state.pending_removal("virtio-drive0"),
            state.pending_removal("virtio-drive0")
        );
        assert_eq!(loaded.state.root_port_slot("rp1"), Some(6));
        assert_eq!(loaded.bridges, *vm.arch.get_bridges());
        // The devices as plugged: final bus and addr (the root-bus device at QEMU's slot 7).
        let device_json =
            |id: &str| serde_json::to_value(&state.plugged(id).unwrap().device).unwrap();
        assert_eq!(device_json("virtio-drive1")["bus"], "rp0");
        assert_eq!(device_json("vfio0")["bus"], "pci-bridge-0");
        assert_eq!(device_json("vfio0")["addr"], "01");
        assert_eq!(device_json("gpu0")["addr"], "07");

        // Applied to the same spec assembled afresh: cold-plugged in plug order (the pending
        // removal in its place), bridges taken.
        let (mut fresh, _) = new_vm(GuestArch::Aarch64, 2);
        let cold = fresh.config.devices.len();
        let mut restored = loaded.apply(&mut fresh).unwrap();
        let added: Vec<String> = fresh.config.devices[cold..]
            .iter()
            .map(|d| QemuDevice::id(d).unwrap().to_owned())
            .collect();
        assert_eq!(added, ["virtio-drive1", "vfio0", "virtio-drive0", "gpu0"]);
        assert_eq!(*fresh.arch.get_bridges(), saved.bridges);
        assert_eq!(restored.free_root_ports(), ["rp1"]);
        log.take();
        let mut hp = fake.hotplugger(fresh.arch.as_mut(), &mut restored);
        finish(hp.unplug("vfio0", T)).unwrap();
        finish(hp.unplug("virtio-drive1", T)).unwrap();
        finish(hp.unplug("virtio-drive0", T)).unwrap();
        assert_eq!(
            log.names(),
            ["device_del", "device_del", "blockdev-del", "device_del", "blockdev-del"],
            "the restored state knows how to remove them"
        );
        assert!(fresh.arch.get_bridges().iter().all(|b| b.devices.is_empty()));
        assert_eq!(restored.free_root_ports(), ["rp0", "rp1"]);
    }

    fn saved_hotplug_refuses_owned_fds_and_a_different_vm() {
        let mut fake = Fake::new(qemu_like(None));
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 2);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        finish(hp.add_network(&endpoint(), Placement::Auto)).unwrap();
        let err = SavedHotplug::capture(&state, vm.arch.as_ref()).unwrap_err();
        assert!(matches!(err, HotplugError::OwnedFds { count: 4, .. }), "{err:?}");
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
        let err = SavedHotplug::from_json(r#"{"version": 3, "bridges": [], "state": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot parse") || err.contains("version 3"), "{err}");
    }

    fn no_unplug_or_rollback_timeout_panics() {
        // Unplug and rollback waits at the edges of Duration: an immediate release completes
        // whatever the timeout; a timeout too long for a deadline is none.
        let mut runner = TestRunner::new(ProptestConfig::with_cases(12));
        runner
            .run(&(durations(), durations()), |(timeout, rollback)| {
                // The bad drive's device_add gets no reply: the rollback deletes the device.
                let rule = |name: &str, args: &Value, n: usize| match name {
                    "device_add" if args["id"] == "virtio-bad" => Answer::NoReply,
                    _ => qemu_like(None)(name, args, n),
                };
                let mut fake = Fake::with_timeout(rule, SHORT);
                let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 1);
                let mut hp = fake
                    .hotplugger(vm.arch.as_mut(), &mut state)
                    .rollback_timeout(rollback);
                add_blk!(hp, "d0", Auto)
                    .unwrap();
                add_blk!(hp, "bad", Bridge)
                    .unwrap_err();
                // Only a zero wait may miss the release.
                let instant = Duration::from_millis(1);
                if !hp.state().pending_removal_ids().is_empty() {
                    prop_assert!(rollback < instant, "rollback {:?}", rollback);
                    prop_assert_eq!(hp.state().pending_removal_ids(), ["virtio-bad"]);
                }
                match finish(hp.unplug("virtio-d0", timeout)) {
                    Ok(()) => prop_assert!(hp.state().pending_removal("virtio-d0").is_none()),
                    Err(e) => {
                        prop_assert!(timeout < instant, "{}", e);
                        prop_assert!(hp.state().pending_removal("virtio-d0").is_some());
                    }
                }
                prop_assert!(hp.state().plugged_ids().is_empty());
                Ok(())
            })
            .unwrap();
    }

    fn s390x_block_and_network_are_numbered_from_the_ccw_bridge() {
        let (mut fake, log) = Fake::logged(qemu_like(None));
        let (mut vm, mut state) = new_vm(GuestArch::S390x, 0);
        // serial0, scsi0 and rng0-dev took fe.0.0001 to fe.0.0003 at assembly.
        assert_eq!(
            vm.arch.get_bridges().iter().next().unwrap().devices.len(),
            3
        );
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let disk = finish(hp.add_block(&drive("drive0"), BlockDriver::VirtioBlk, Placement::Auto))
            .unwrap();
        assert_eq!(disk.pci_path, None);
        assert_eq!(disk.ccw_address().as_deref(), Some("0.0.0004"));
        let Location::Bridge(slot) = &disk.location else {
            panic!("{:?}", disk.location);
        };
        assert_eq!((slot.bridge_id.as_str(), slot.slot), ("ccw-bridge-0", 4));
        assert_eq!(
            log.take(),
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
        let nic = finish(hp.add_network(&endpoint_without_vhost(), Placement::Auto))
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
        assert_eq!(log.take(), expected);
        // Unplugged, the disk's number is the next one given.
        finish(hp.unplug("virtio-drive0", T)).unwrap();
        assert_eq!(log.names(), ["device_del", "blockdev-del"]);
        let again = finish(hp.add_block(&drive("drive1"), BlockDriver::VirtioBlkCcw, Placement::Auto))
            .unwrap();
        assert_eq!(again.ccw_address().as_deref(), Some("0.0.0004"));
        assert_eq!(log.take()[1].1["devno"], "fe.0.0004");
        // No PCIe root ports on s390x.
        assert!(matches!(
            finish(hp.add_block(
                &drive("drive2"),
                BlockDriver::VirtioBlk,
                Placement::RootPort
            )),
            Err(HotplugError::Placement { .. })
        ));
        assert!(log.take().is_empty());
    }

    fn a_refused_ccw_device_frees_its_number() {
        let (mut fake, log) = Fake::logged(qemu_like(Some(("device_add", 1))));
        let (mut vm, mut state) = new_vm(GuestArch::S390x, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        finish(hp.add_block(&drive("drive0"), BlockDriver::VirtioBlkCcw, Placement::Auto))
            .unwrap_err();
        assert_eq!(log.names(), ["blockdev-add", "device_add", "blockdev-del"]);
        let plugged = finish(hp.add_block(&drive("drive1"), BlockDriver::VirtioBlkCcw, Placement::Auto))
            .unwrap();
        assert_eq!(plugged.ccw_address().as_deref(), Some("0.0.0004"));
    }

    fn virtio_blk_ccw_needs_a_ccw_bridge() {
        let (mut fake, log) = Fake::logged(qemu_like(None));
        let (mut vm, mut state) = new_vm(GuestArch::Aarch64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let err = finish(hp.add_block(&drive("drive0"), BlockDriver::VirtioBlkCcw, Placement::Auto))
            .unwrap_err();
        assert!(
            err.to_string().contains("no more bridge slots available"),
            "{err}"
        );
        assert!(log.take().is_empty());
    }

    fn pseries_hotplugs_on_its_pci_bridge() {
        let (mut fake, log) = Fake::logged(qemu_like(None));
        let (mut vm, mut state) = new_vm(GuestArch::Ppc64le, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let disk = finish(hp.add_block(&drive("drive0"), BlockDriver::VirtioBlk, Placement::Auto))
            .unwrap();
        assert_eq!(disk.ccw_address(), None);
        assert_eq!(disk.pci_path.unwrap().to_string(), "02/01");
        assert_eq!(
            log.take()[1],
            (
                "device_add".into(),
                json!({"driver": "virtio-blk-pci", "id": "virtio-drive0", "drive": "drive0",
                       "bus": "pci-bridge-0", "addr": "01", "share-rw": true})
            )
        );
    }

    fn nvdimm_block_hotplug() {
        let dir = std::env::temp_dir().join(format!(
            "hvarch-nvdimm-{}-{}",
            std::process::id(),
            module_path!().replace("::", "-")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("pmem.img");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(2 << 20))
            .expect("image");
        let (mut fake, log) = Fake::logged(qemu_like(None));
        let (mut vm, mut state) = new_vm(GuestArch::X86_64, 0);
        let mut hp = fake.hotplugger(vm.arch.as_mut(), &mut state);
        let mut pmem = drive("pmem0");
        pmem.file = file.clone();
        let plugged = finish(hp.add_block(&pmem, BlockDriver::Nvdimm, Placement::Auto))
            .unwrap();
        assert_eq!(plugged.id, "nvdimmpmem0");
        assert_eq!(plugged.location, Location::AsGiven);
        let path = file.to_str().expect("utf-8 temp path");
        assert_eq!(
            log.take(),
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
        finish(hp.add_block(&ro, BlockDriver::Nvdimm, Placement::Auto))
            .unwrap();
        let sent = log.take();
        assert_eq!(sent[0].1["readonly"], true);
        assert_eq!(sent[1].1["unarmed"], true);
        // A missing file: nothing is sent.
        let mut missing = pmem;
        missing.id = "pmem2".into();
        missing.file = dir.join("missing.img");
        let err = finish(hp.add_block(&missing, BlockDriver::Nvdimm, Placement::Auto))
            .unwrap_err();
        assert!(err.to_string().contains("missing.img"), "{err}");
        assert!(log.take().is_empty());
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }
}
