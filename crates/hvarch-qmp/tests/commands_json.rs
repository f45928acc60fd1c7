//! Exact JSON on the wire for every command of govmm's QMP client (kata-go.md §3.4) and the
//! probing commands. govmm's own tests check only command names.

use hvarch_qmp::commands::*;
use hvarch_qmp::Command;
use serde_json::{json, Value};

/// The message as sent with id 1.
fn wire(c: &Command) -> Value {
    c.to_message(1).expect("serialisable")
}

#[track_caller]
fn check(c: Command, expected: Value) {
    assert_eq!(wire(&c), expected, "command {}", c.name);
}

#[track_caller]
fn check_args(c: Command, name: &str, args: Value) {
    check(c, json!({"execute": name, "arguments": args, "id": 1}));
}

#[test]
fn no_argument_commands() {
    for (c, name) in [
        (qmp_capabilities(), "qmp_capabilities"),
        (stop(), "stop"),
        (cont(), "cont"),
        (system_powerdown(), "system_powerdown"),
        (system_reset(), "system_reset"),
        (quit(), "quit"),
        (query_status(), "query-status"),
        (query_version(), "query-version"),
        (query_pci(), "query-pci"),
        (query_block(), "query-block"),
        (query_named_block_nodes(), "query-named-block-nodes"),
        (query_commands(), "query-commands"),
        (query_qmp_schema(), "query-qmp-schema"),
        (query_hotpluggable_cpus(), "query-hotpluggable-cpus"),
        (query_memory_devices(), "query-memory-devices"),
        (query_cpus(), "query-cpus"),
        (query_cpus_fast(), "query-cpus-fast"),
        (query_migrate(), "query-migrate"),
    ] {
        check(c, json!({"execute": name, "id": 1}));
    }
}

#[test]
fn blockdev() {
    check_args(
        blockdev_add("/dev/sdb", "drive-0", true),
        "blockdev-add",
        json!({"driver": "raw", "read-only": true, "file": {"driver": "file", "filename": "/dev/sdb"}, "node-name": "drive-0"}),
    );
    check_args(
        blockdev_add_with_driver("host_device", "/dev/sdb", "drive-0", false),
        "blockdev-add",
        json!({"driver": "raw", "read-only": false, "file": {"driver": "host_device", "filename": "/dev/sdb"}, "node-name": "drive-0"}),
    );
    check_args(
        blockdev_add_with_cache("/dev/sdb", "drive-0", true, false, false),
        "blockdev-add",
        json!({"driver": "raw", "read-only": false, "file": {"driver": "file", "filename": "/dev/sdb"}, "node-name": "drive-0",
               "cache": {"direct": true, "no-flush": false}}),
    );
    check_args(
        blockdev_add_with_driver_cache("host_device", "/dev/sdb", "drive-0", false, true, true),
        "blockdev-add",
        json!({"driver": "raw", "read-only": true, "file": {"driver": "host_device", "filename": "/dev/sdb"}, "node-name": "drive-0",
               "cache": {"direct": false, "no-flush": true}}),
    );
    check_args(
        blockdev_del("drive-0"),
        "blockdev-del",
        json!({"node-name": "drive-0"}),
    );
}

#[test]
fn device_add_block_variants() {
    let base = BlockDeviceAdd {
        blockdev_id: "drive-0",
        dev_id: "disk-0",
        driver: "virtio-blk-pci",
        bus: "rp0",
        ..Default::default()
    };
    check_args(
        device_add_block(&base),
        "device_add",
        json!({"id": "disk-0", "driver": "virtio-blk-pci", "drive": "drive-0", "bus": "rp0"}),
    );
    check_args(
        device_add_block(&BlockDeviceAdd {
            shared: true,
            romfile: Some(""),
            disable_modern: true,
            ..base.clone()
        }),
        "device_add",
        json!({"id": "disk-0", "driver": "virtio-blk-pci", "drive": "drive-0", "bus": "rp0", "share-rw": true, "romfile": "", "disable-modern": true}),
    );
    check_args(
        device_add_block(&BlockDeviceAdd {
            driver: "virtio-blk-ccw",
            bus: "fe.0.0001",
            ccw: true,
            ..base.clone()
        }),
        "device_add",
        json!({"id": "disk-0", "driver": "virtio-blk-ccw", "drive": "drive-0", "devno": "fe.0.0001"}),
    );
    check_args(
        device_add_block(&BlockDeviceAdd { bus: "", ..base }),
        "device_add",
        json!({"id": "disk-0", "driver": "virtio-blk-pci", "drive": "drive-0"}),
    );
}

#[test]
fn device_add_scsi_variants() {
    let a = ScsiDeviceAdd {
        blockdev_id: "drive-1",
        dev_id: "scsi-disk-1",
        driver: "scsi-hd",
        bus: "scsi0.0",
        scsi_id: Some(1),
        lun: Some(0),
        shared: true,
    };
    check_args(
        device_add_scsi(&a).expect("valid"),
        "device_add",
        json!({"id": "scsi-disk-1", "driver": "scsi-hd", "drive": "drive-1", "bus": "scsi0.0", "scsi-id": 1, "lun": 0, "share-rw": true}),
    );
    check_args(
        device_add_scsi(&ScsiDeviceAdd {
            scsi_id: None,
            lun: None,
            shared: false,
            driver: "scsi-cd",
            ..a.clone()
        })
        .expect("valid"),
        "device_add",
        json!({"id": "scsi-disk-1", "driver": "scsi-cd", "drive": "drive-1", "bus": "scsi0.0"}),
    );
    let err = device_add_scsi(&ScsiDeviceAdd {
        driver: "virtio-blk-pci",
        ..a
    })
    .expect_err("invalid");
    assert!(
        err.to_string()
            .contains("invalid SCSI driver provided virtio-blk-pci"),
        "{err}"
    );
}

#[test]
fn device_add_pci_block() {
    check_args(
        device_add_pci(&PciDeviceAdd {
            blockdev_id: "drive-2",
            dev_id: "disk-2",
            driver: "virtio-blk-pci",
            addr: "0x3",
            bus: "pci-bridge-0",
            romfile: Some("efi-virtio.rom"),
            queues: 4,
            shared: true,
            disable_modern: true,
        }),
        "device_add",
        json!({"id": "disk-2", "driver": "virtio-blk-pci", "drive": "drive-2", "addr": "0x3", "bus": "pci-bridge-0",
               "share-rw": true, "num-queues": 4, "romfile": "efi-virtio.rom", "disable-modern": true}),
    );
    check_args(
        device_add_pci(&PciDeviceAdd {
            blockdev_id: "d",
            dev_id: "i",
            driver: "virtio-blk-pci",
            addr: "0x4",
            ..Default::default()
        }),
        "device_add",
        json!({"id": "i", "driver": "virtio-blk-pci", "drive": "d", "addr": "0x4"}),
    );
}

#[test]
fn netdev_commands() {
    check_args(
        netdev_add("tap", "net-0", "tap0", "no", "no", 1),
        "netdev_add",
        json!({"type": "tap", "id": "net-0", "ifname": "tap0", "downscript": "no", "script": "no"}),
    );
    check_args(
        netdev_add("tap", "net-0", "tap0", "no", "no", 4),
        "netdev_add",
        json!({"type": "tap", "id": "net-0", "ifname": "tap0", "downscript": "no", "script": "no", "queues": 4}),
    );
    check_args(
        netdev_add_chardev("vhost-user", "net-1", "char-1", 2),
        "netdev_add",
        json!({"type": "vhost-user", "id": "net-1", "chardev": "char-1", "queues": 2}),
    );
    check_args(
        netdev_add_chardev("vhost-user", "net-1", "char-1", 1),
        "netdev_add",
        json!({"type": "vhost-user", "id": "net-1", "chardev": "char-1"}),
    );
    check_args(
        netdev_add_by_fds("tap", "net-2", &["fd0", "fd1"], &["vfd0", "vfd1"]),
        "netdev_add",
        json!({"type": "tap", "id": "net-2", "fds": "fd0:fd1", "vhost": true, "vhostfds": "vfd0:vfd1"}),
    );
    check_args(
        netdev_add_by_fds("tap", "net-2", &["fd0"], &[]),
        "netdev_add",
        json!({"type": "tap", "id": "net-2", "fds": "fd0"}),
    );
    check_args(netdev_del("net-0"), "netdev_del", json!({"id": "net-0"}));
}

#[test]
fn net_devices() {
    check_args(
        device_add_net_pci(&NetPciDeviceAdd {
            netdev_id: "net-0",
            dev_id: "virtio-net-0",
            mac: "02:00:00:00:00:01",
            addr: "0x5",
            bus: "rp1",
            romfile: Some(""),
            queues: 4,
            disable_modern: true,
        }),
        "device_add",
        json!({"id": "virtio-net-0", "driver": "virtio-net-pci", "romfile": "", "bus": "rp1", "addr": "0x5",
               "mac": "02:00:00:00:00:01", "netdev": "net-0", "disable-modern": true, "mq": true, "vectors": 10}),
    );
    check_args(
        device_add_net_pci(&NetPciDeviceAdd {
            dev_id: "n",
            ..Default::default()
        }),
        "device_add",
        json!({"id": "n", "driver": "virtio-net-pci"}),
    );
    check_args(
        device_add_net_ccw("net-0", "virtio-net-0", "02:00:00:00:00:01", "fe.0.0002", 2),
        "device_add",
        json!({"id": "virtio-net-0", "driver": "virtio-net-ccw", "netdev": "net-0", "mac": "02:00:00:00:00:01", "devno": "fe.0.0002", "mq": true}),
    );
    check_args(
        device_add_net_ccw("net-0", "virtio-net-0", "02:00:00:00:00:01", "fe.0.0002", 0),
        "device_add",
        json!({"id": "virtio-net-0", "driver": "virtio-net-ccw", "netdev": "net-0", "mac": "02:00:00:00:00:01", "devno": "fe.0.0002"}),
    );
}

#[test]
fn device_del_object_chardev() {
    check_args(device_del("disk-0"), "device_del", json!({"id": "disk-0"}));
    check_args(object_del("mem0"), "object-del", json!({"id": "mem0"}));
    check_args(
        object_add("memory-backend-ram", "mem0", json!({"size": 1048576})).expect("ok"),
        "object-add",
        json!({"qom-type": "memory-backend-ram", "id": "mem0", "size": 1048576}),
    );
    assert!(object_add("x", "y", json!([1])).is_err());
    check_args(
        chardev_remove("char-0"),
        "chardev-remove",
        json!({"id": "char-0"}),
    );
    check_args(
        chardev_add_unix_socket("char-0", "/run/vc.sock", false, true),
        "chardev-add",
        json!({"id": "char-0", "backend": {"type": "socket", "data": {"wait": false, "server": true,
               "addr": {"type": "unix", "data": {"path": "/run/vc.sock"}}}}}),
    );
    check_args(
        chardev_add_unix_socket("char-1", "/run/vu.sock", true, false),
        "chardev-add",
        json!({"id": "char-1", "backend": {"type": "socket", "data": {"server": false,
               "addr": {"type": "unix", "data": {"path": "/run/vu.sock"}}}}}),
    );
    check_args(
        device_add_virt_serial_port("port-0", "agent.channel.0", "char-0"),
        "device_add",
        json!({"driver": "virtserialport", "id": "port-0", "name": "agent.channel.0", "chardev": "char-0"}),
    );
}

#[test]
fn vhost_user_vfio_vsock() {
    check_args(
        device_add_pci_vhost_user("vhost-user-blk-pci", "vub-0", "char-vub-0", "0x6", "rp2"),
        "device_add",
        json!({"driver": "vhost-user-blk-pci", "id": "vub-0", "chardev": "char-vub-0", "addr": "0x6", "bus": "rp2"}),
    );
    check_args(
        device_add_vfio("vfio-0", "02:10.0", "rp3", "", false),
        "device_add",
        json!({"id": "vfio-0", "driver": "vfio-pci", "host": "02:10.0", "romfile": "", "bus": "rp3"}),
    );
    check_args(
        device_add_vfio("vfio-0", "0.0.1234", "", "", true),
        "device_add",
        json!({"id": "vfio-0", "driver": "vfio-ccw", "host": "0.0.1234", "romfile": ""}),
    );
    check_args(
        device_add_pci_vfio("vfio-1", "02:10.1", "0x7", "rp3", "rom.bin"),
        "device_add",
        json!({"id": "vfio-1", "driver": "vfio-pci", "host": "02:10.1", "addr": "0x7", "romfile": "rom.bin", "bus": "rp3"}),
    );
    check_args(
        device_add_pci_vfio_mediated("mdev-0", "/sys/bus/mdev/devices/uuid", "0x8", "rp4", ""),
        "device_add",
        json!({"id": "mdev-0", "driver": "vfio-pci", "sysfsdev": "/sys/bus/mdev/devices/uuid", "romfile": "", "bus": "rp4", "addr": "0x8"}),
    );
    check_args(
        device_add_pci_vfio_mediated("mdev-0", "/sys/x", "", "", ""),
        "device_add",
        json!({"id": "mdev-0", "driver": "vfio-pci", "sysfsdev": "/sys/x", "romfile": ""}),
    );
    check_args(
        device_add_ap_vfio_mediated("/sys/devices/vfio_ap/matrix/uuid"),
        "device_add",
        json!({"driver": "vfio-ap", "sysfsdev": "/sys/devices/vfio_ap/matrix/uuid"}),
    );
    check_args(
        device_add_pci_vsock(&VsockPciAdd {
            id: "vsock-0",
            guest_cid: 3,
            vhostfd: "vhostfd0",
            addr: "0x9",
            bus: "rp5",
            romfile: "",
            disable_modern: true,
        }),
        "device_add",
        json!({"driver": "vhost-vsock-pci", "id": "vsock-0", "guest-cid": 3, "vhostfd": "vhostfd0", "addr": "0x9",
               "romfile": "", "bus": "rp5", "disable-modern": true}),
    );
}

#[test]
fn cpu_hotplug() {
    let a = CpuDeviceAdd {
        driver: "host-x86_64-cpu",
        cpu_id: "cpu-1",
        socket_id: Some(0),
        die_id: Some(0),
        core_id: 1,
        thread_id: Some(0),
    };
    check_args(
        device_add_cpu(&a),
        "device_add",
        json!({"driver": "host-x86_64-cpu", "id": "cpu-1", "core-id": 1, "socket-id": 0, "thread-id": 0, "die-id": 0}),
    );
    check_args(
        device_add_cpu(&CpuDeviceAdd {
            driver: "host-s390x-cpu",
            ..a.clone()
        }),
        "device_add",
        json!({"driver": "host-s390x-cpu", "id": "cpu-1", "core-id": 1}),
    );
    check_args(
        device_add_cpu(&CpuDeviceAdd {
            driver: "host-aarch64-cpu",
            thread_id: None,
            ..a
        }),
        "device_add",
        json!({"driver": "host-aarch64-cpu", "id": "cpu-1", "core-id": 1, "socket-id": 0}),
    );
}

#[test]
fn migration_balloon_dump_qom_fds() {
    check_args(
        migrate_set_capabilities(&[("x-ignore-shared", true), ("bypass-shared-memory", false)]),
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}, {"capability": "bypass-shared-memory", "state": false}]}),
    );
    check_args(
        migrate("exec:cat>/tmp/state"),
        "migrate",
        json!({"uri": "exec:cat>/tmp/state"}),
    );
    check_args(
        migrate_incoming("defer"),
        "migrate-incoming",
        json!({"uri": "defer"}),
    );
    check_args(balloon(1 << 30), "balloon", json!({"value": 1073741824u64}));
    check_args(
        dump_guest_memory("file:/tmp/core", false, "elf"),
        "dump-guest-memory",
        json!({"protocol": "file:/tmp/core", "paging": false, "format": "elf"}),
    );
    check_args(
        qom_set(
            "/machine/peripheral/balloon0",
            "guest-stats-polling-interval",
            2u64,
        ),
        "qom-set",
        json!({"path": "/machine/peripheral/balloon0", "property": "guest-stats-polling-interval", "value": 2}),
    );
    check_args(
        qom_get("/machine", "type"),
        "qom-get",
        json!({"path": "/machine", "property": "type"}),
    );
    check_args(
        qom_list("/machine/peripheral"),
        "qom-list",
        json!({"path": "/machine/peripheral"}),
    );
    check_args(getfd("fd-tap0"), "getfd", json!({"fdname": "fd-tap0"}));
    check_args(
        add_fd(Some(2), Some("disk")),
        "add-fd",
        json!({"fdset-id": 2, "opaque": "disk"}),
    );
    check(add_fd(None, None), json!({"execute": "add-fd", "id": 1}));
}

#[test]
fn memory_hotplug() {
    let p = memdev_add(
        "memory-backend-file",
        "mem1",
        "/dev/shm/m",
        512,
        true,
        "virtio-mem-pci",
        "vm1",
    );
    check_args(
        p.object_add,
        "object-add",
        json!({"qom-type": "memory-backend-file", "id": "mem1", "size": 536870912u64, "mem-path": "/dev/shm/m", "share": true}),
    );
    check_args(
        p.device_add,
        "device_add",
        json!({"driver": "virtio-mem-pci", "id": "vm1", "memdev": "mem1"}),
    );
    check_args(p.rollback, "object-del", json!({"id": "mem1"}));
    let p = pc_dimm_add("memory-backend-ram", "mem2", "", 128, false);
    check_args(
        p.object_add,
        "object-add",
        json!({"qom-type": "memory-backend-ram", "id": "mem2", "size": 134217728u64}),
    );
    check_args(
        p.device_add,
        "device_add",
        json!({"driver": "pc-dimm", "id": "dimmmem2", "memdev": "mem2"}),
    );
    let p = nvdimm_add("0", "/img/rootfs.img", 1 << 30, Some(true));
    check_args(
        p.object_add,
        "object-add",
        json!({"qom-type": "memory-backend-file", "id": "nvdimmbackmem0", "mem-path": "/img/rootfs.img", "size": 1073741824u64, "share": true, "pmem": true}),
    );
    check_args(
        p.device_add,
        "device_add",
        json!({"driver": "nvdimm", "id": "nvdimm0", "memdev": "nvdimmbackmem0"}),
    );
    check_args(p.rollback, "object-del", json!({"id": "nvdimmbackmem0"}));
    let p = nvdimm_add("1", "/img", 4096, None);
    assert!(p.object_add.arguments.get("pmem").is_none());
}

#[test]
fn typed_qapi_commands_match() {
    let typed = Command::from_typed(&hvarch_qmp::qapi_qmp::blockdev_del {
        node_name: "drive-0".into(),
    })
    .expect("ok");
    assert_eq!(wire(&typed), wire(&blockdev_del("drive-0")));
    let typed = Command::from_typed(&hvarch_qmp::qapi_qmp::query_status {}).expect("ok");
    assert_eq!(wire(&typed), wire(&query_status()));
}
