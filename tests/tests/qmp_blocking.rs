//! hvarch-qmp's blocking client against a real QEMU (qemu-system-aarch64, TCG, paused), with
//! the `oob` capability negotiated (the default) and without it: events, errors, fd passing and
//! concurrent commands must behave the same.

use std::os::fd::AsFd;
use std::time::Duration;

use hvarch_qmp::commands::{self, BlockDeviceAdd};
use hvarch_qmp::qapi_qmp;
use hvarch_qmp::{Command, Error, Qmp};
use hvarch_tests::paused_aarch64_with_root_port as qemu;
use serde_json::json;

mod qmp_support;

use qmp_support::{
    assert_one_sleep_per_round_trip, config, PassedFiles, CONCURRENT, SLEEP_ROUND_TRIPS,
};

#[test]
fn blocking_client_drives_real_qemu_with_oob() {
    drive_real_qemu(true);
}

#[test]
fn blocking_client_drives_real_qemu_without_oob() {
    drive_real_qemu(false);
}

/// A lone caller waits for QEMU's reply without being woken when QEMU has read the command.
#[test]
fn a_lone_caller_sleeps_once_per_round_trip_with_qemu() {
    let vm = qemu();
    let qmp = Qmp::connect(vm.qmp_path(), &config(true)).expect("connect and negotiate");
    let before = hvarch_qmp::testing::thread_sleeps();
    for _ in 0..SLEEP_ROUND_TRIPS {
        qmp.execute(&qapi_qmp::query_status {})
            .expect("query-status");
    }
    assert_one_sleep_per_round_trip(before, hvarch_qmp::testing::thread_sleeps());
}

fn drive_real_qemu(enable_oob: bool) {
    let mut vm = qemu();
    let qmp = Qmp::connect(vm.qmp_path(), &config(enable_oob)).expect("connect and negotiate");
    assert!(qmp.is_connected());
    // QEMU offers `oob`: it is negotiated exactly when asked for.
    assert!(qmp.greeting().supports_oob());
    assert_eq!(qmp.oob(), enable_oob);

    // Version: greeting and query-version agree.
    let v = qmp
        .execute(&qapi_qmp::query_version {})
        .expect("query-version");
    assert_eq!(u64::from(qmp.version().major), v.qemu.major as u64);
    assert_eq!(u64::from(qmp.version().minor), v.qemu.minor as u64);
    assert!(qmp.version() >= "7.2".parse().expect("version"));

    let status = qmp
        .execute(&qapi_qmp::query_status {})
        .expect("query-status");
    assert!(!status.running);
    assert!(matches!(status.status, qapi_qmp::RunState::prelaunch));

    // Block hotplug: blockdev-add + device_add + device_del (DEVICE_DELETED) + blockdev-del.
    let img = vm.dir().join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("image");
    let img = img.to_str().expect("utf-8 path").to_owned();
    qmp.execute_command(&commands::blockdev_add(&img, "drive0", false))
        .expect("blockdev-add");
    qmp.execute_command(&commands::device_add_block(&BlockDeviceAdd {
        blockdev_id: "drive0",
        dev_id: "disk0",
        driver: "virtio-blk-pci",
        bus: "rp0",
        shared: true,
        ..Default::default()
    }))
    .expect("device_add");
    let ids = qmp
        .execute_command(&commands::qom_list("/machine/peripheral"))
        .expect("qom-list");
    assert!(ids.to_string().contains("disk0"), "{ids}");
    let ev = qmp
        .device_del("disk0", Duration::from_secs(10))
        .expect("DEVICE_DELETED");
    assert_eq!(ev.data["device"], "disk0");
    assert!(ev.timestamp.to_system_time().is_some());
    qmp.execute_command(&commands::blockdev_del("drive0"))
        .expect("blockdev-del");
    let nodes = qmp
        .execute_command(&commands::query_named_block_nodes())
        .expect("nodes");
    assert!(!nodes.to_string().contains("drive0"), "{nodes}");

    // Errors are typed, and the connection survives them.
    match qmp.execute_command(&commands::device_del("nope")) {
        Err(Error::Command { class, .. }) => assert_eq!(class, "DeviceNotFound"),
        other => panic!("{other:?}"),
    }

    // netdev_add/del.
    qmp.execute_raw("netdev_add", json!({"type": "user", "id": "net0"}))
        .expect("netdev_add");
    qmp.execute_command(&commands::netdev_del("net0"))
        .expect("netdev_del");

    // chardev-add/remove.
    let sock = vm.dir().join("ch0.sock");
    qmp.execute_command(&commands::chardev_add_unix_socket(
        "ch0",
        sock.to_str().expect("utf-8"),
        false,
        true,
    ))
    .expect("chardev-add");
    qmp.execute_command(&commands::chardev_remove("ch0"))
        .expect("chardev-remove");

    // object-add/del, qom-get/qom-set (a throttle-group's `limits` are settable at run time).
    qmp.execute_command(
        &commands::object_add("throttle-group", "tg0", json!({"x-iops-total": 50})).expect("args"),
    )
    .expect("object-add");
    qmp.execute_command(&commands::qom_set(
        "/objects/tg0",
        "limits",
        json!({"iops-total": 100}),
    ))
    .expect("qom-set");
    let got = qmp
        .execute_command(&commands::qom_get("/objects/tg0", "limits"))
        .expect("qom-get");
    assert_eq!(got["iops-total"], json!(100), "{got}");
    qmp.execute_command(&commands::object_del("tg0"))
        .expect("object-del");

    // migrate-set-capabilities.
    qmp.execute_command(&commands::migrate_set_capabilities(&[(
        "x-ignore-shared",
        true,
    )]))
    .expect("migrate-set-capabilities");

    // getfd with a real fd, proven by closefd succeeding.
    let file = std::fs::File::open("/dev/null").expect("open");
    qmp.getfd("nullfd", file.as_fd()).expect("getfd");
    qmp.execute_raw("closefd", json!({"fdname": "nullfd"}))
        .expect("closefd finds the passed fd");

    // Descriptors passed at once each reach QEMU with their own command.
    let files = PassedFiles::new(&vm);
    let infos: Vec<_> = std::thread::scope(|s| {
        let calls: Vec<_> = files
            .each()
            .map(|(opaque, fd)| {
                let qmp = &qmp;
                s.spawn(move || qmp.add_fd(None, Some(opaque), fd).expect("add-fd"))
            })
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().expect("add-fd thread"))
            .collect()
    });
    files.assert_reached_qemu(&vm, &infos);

    // More commands at once than QEMU queues: all answered, errors to their own callers.
    std::thread::scope(|s| {
        for i in 0..CONCURRENT {
            let qmp = &qmp;
            s.spawn(move || {
                if i % 4 == 0 {
                    let err = qmp
                        .execute_command(&commands::device_del("nope"))
                        .expect_err("no such device");
                    assert!(
                        matches!(err, Error::Command { ref class, .. } if class == "DeviceNotFound")
                    );
                } else {
                    let status = qmp.execute(&qapi_qmp::query_status {}).expect("status");
                    assert!(!status.running);
                }
            });
        }
    });

    // A command given up on before QEMU answers holds its wire id until the answer comes:
    // the commands after it, on another wire id and then on the same one again, get their
    // own replies (`query-name`'s would not decode as `query-status`'s or `query-version`'s).
    let mut given_up = 0;
    for _ in 0..20 {
        let name = Command::bare("query-name");
        match qmp.execute_with_timeout(&name, Duration::from_nanos(1)) {
            Err(Error::Timeout { .. }) => given_up += 1,
            Ok(_) => {}
            Err(e) => panic!("query-name: {e}"),
        }
        let status = qmp
            .execute(&qapi_qmp::query_status {})
            .expect("query-status gets its own reply");
        assert!(!status.running);
        let version = qmp
            .execute(&qapi_qmp::query_version {})
            .expect("query-version gets its own reply");
        assert_eq!(u64::from(qmp.version().major), version.qemu.major as u64);
    }
    assert!(given_up > 0, "QEMU answered within a nanosecond every time");

    // Probing.
    let cmds = qmp
        .execute(&qapi_qmp::query_commands {})
        .expect("query-commands");
    assert!(cmds.iter().any(|c| c.name == "device_add"));
    let schema = qmp
        .execute_command(&commands::query_qmp_schema())
        .expect("schema");
    assert!(schema.as_array().is_some_and(|a| a.len() > 100));
    qmp.execute_command(&commands::query_pci())
        .expect("query-pci");

    // stop/cont.
    qmp.execute_command(&commands::cont()).expect("cont");
    assert!(
        qmp.execute(&qapi_qmp::query_status {})
            .expect("status")
            .running
    );
    qmp.execute_command(&commands::stop()).expect("stop");
    assert!(
        !qmp.execute(&qapi_qmp::query_status {})
            .expect("status")
            .running
    );

    // quit: QEMU replies, then the connection closes and QEMU exits.
    qmp.execute_command(&commands::quit()).expect("quit");
    assert!(
        vm.wait_exit(Duration::from_secs(10)).is_some(),
        "QEMU did not exit"
    );
    // Disconnected whether or not the reader has seen the end of the stream yet (a write to
    // the closed socket fails with EPIPE, which is a disconnection too).
    assert!(matches!(
        qmp.execute_command(&commands::query_status()),
        Err(Error::Disconnected)
    ));
    assert!(!qmp.is_connected());
    qmp.close();
    qmp.close();
}
