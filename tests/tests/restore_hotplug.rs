//! Save and restore of a VM with hot-plugged devices against real QEMU (arm64 `virt`, TCG,
//! paused with `-S`, two PCIe root ports and Kata's default bridge): a virtio-blk (1 MiB raw
//! file) hot-plugged on a root port and a user-mode virtio-net hot-plugged on a bridge slot,
//! the VM saved, then restored into a new VM from the same spec; on `Vm` and on `AsyncVm`.
//!
//! Checked on the restored VM: the load completes (QEMU accepts the stream only if the
//! devices match), `qom-list /machine/peripheral` lists the same devices as the source, each
//! hot-plugged device sits on the same bus (`parent_bus`), `query-named-block-nodes` has the
//! disk's node, its `HotplugState` knows both devices (ids, kinds, locations, PCI paths, the
//! root port and bridge slot in use), and the hotplug state file is private (0600).
//!
//! Unplug on the restored VM: there the devices are cold-plugged, which on a guest-less VM
//! would mean `DEVICE_DELETED` never comes (see the unplug notes of the QEMU reference), but
//! the PCIe slot state comes from the migration stream: unplugging the disk through the
//! restored `HotplugState` completes (`DEVICE_DELETED` within 5 s, then `blockdev-del`), the
//! device and its node are gone and its root port is free again. Checked on QEMU 10.0.2; the
//! NIC on the bridge is not unplugged, and nothing here boots a guest.
//!
//! A pending removal (a `device_del` QEMU did not confirm) is carried too: the restored VM
//! has the device, its node and the pending record, and refuses the same drive again.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use hvarch::hotplug::{HotplugError, Location, Placement};
use hvarch::hvarch_arch::resources::BlockDrive;
use hvarch::hvarch_arch::settings::BlockDriver;
use hvarch::hvarch_devices::net::{NetBackend, NetDevice};
use hvarch::lifecycle::hotplug_state_path;
use hvarch::{assemble, GuestArch, LaunchOptions, Vm, VmSpec};
use hvarch_tests::query::{vm_block_nodes, vm_parent_bus, vm_peripherals};
use hvarch_tests::spec::runnable;
use hvarch_tests::{assert_no_children_in, TempDir};
use serde_json::json;

const GRACE: Duration = Duration::from_millis(100);

fn spec(dir: &TempDir, runtime: &str) -> VmSpec {
    let mut spec = VmSpec::kata_default();
    spec.id = "restore-hotplug".into();
    spec.arch = Some(GuestArch::Aarch64);
    spec.host_memory_mb = Some(4096);
    spec.host_cpus = Some(4);
    spec.hypervisor.memory_mb = 256;
    spec.hypervisor.pcie_root_ports = 2;
    runnable(&mut spec, dir);
    spec.runtime_dir = Some(dir.join(runtime));
    spec
}

/// Drive `drive0` on a 1 MiB raw file in `dir`.
fn drive0(dir: &TempDir) -> BlockDrive {
    let file = dir.join("disk0.img");
    std::fs::write(&file, vec![0u8; 1 << 20]).expect("write image");
    BlockDrive {
        file,
        format: "raw".into(),
        id: "drive0".into(),
        read_only: false,
        share_rw: false,
        index: 0,
    }
}

hvarch_tests::two_drivers! {
    #[test]
    fn arm64_hot_plugged_disk_and_nic_survive_save_and_restore() {
        let dir = TempDir::new();
        let source_spec = spec(&dir, "run-source");
        let assembled = assemble(&source_spec).expect("assemble");
        let mut source = finish(TestVm::launch(assembled, LaunchOptions::default())).expect("launch");

        let drive = drive0(&dir);
        let disk = finish(source.hotplug().add_block(&drive, BlockDriver::VirtioBlk, Placement::RootPort))
            .expect("hot-plug virtio-blk");
        let mut nic = NetDevice::new("net0", "hostnet0", NetBackend::User {});
        nic.mac = Some("52:54:00:12:34:56".into());
        nic.virtio.romfile = Some(String::new());
        let nic = finish(source.hotplug().plug(nic, Placement::Bridge))
            .expect("hot-plug virtio-net on a bridge");
        assert!(matches!(nic.location, Location::Bridge(_)), "{nic:?}");
        let devices = vm_peripherals(&source);
        assert!(devices.contains(&"virtio-drive0".to_owned()), "{devices:?}");
        assert!(devices.contains(&"net0".to_owned()), "{devices:?}");
        let buses = (
            vm_parent_bus(&source, "virtio-drive0"),
            vm_parent_bus(&source, "net0"),
        );

        let state = dir.join("vm.state");
        finish(source.save(&state)).expect("save");
        let hotplug_file = hotplug_state_path(&state);
        let mode = std::fs::metadata(&hotplug_file)
            .expect("the hotplug state file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let saved_bridges = source.arch().get_bridges().clone();
        finish(source.shutdown(GRACE)).expect("shutdown source");
        drop(source);

        let restored_spec = spec(&dir, "run-restored");
        let mut restored = finish(TestVm::restore(
            assemble(&restored_spec).expect("assemble"),
            &state,
            LaunchOptions::default(),
        ))
        .unwrap_or_else(|e| panic!("restore: {e}"));
        // Saved in `prelaunch` (`-S`, never run), restored in it.
        assert_eq!(finish(restored.status()).expect("status"), "prelaunch");
        assert_eq!(vm_peripherals(&restored), devices);
        assert_eq!(
            (
                vm_parent_bus(&restored, "virtio-drive0"),
                vm_parent_bus(&restored, "net0")
            ),
            buses
        );
        assert!(vm_block_nodes(&restored).contains(&"drive0".to_owned()));

        let known = restored.hotplug_state();
        assert_eq!(known.plugged_ids(), ["net0", "virtio-drive0"]);
        assert_eq!(known.plugged("virtio-drive0"), Some(&disk));
        assert_eq!(known.plugged("net0"), Some(&nic));
        assert_eq!(known.free_root_ports(), ["rp1"]);
        assert_eq!(*restored.arch().get_bridges(), saved_bridges);

        // The restored VM's state can unplug the disk: the slot state came with the migration
        // stream, so the (cold-plugged here) device is released at once like on the source.
        finish(restored.hotplug().unplug("virtio-drive0", Duration::from_secs(5)))
            .expect("unplug the disk on the restored VM");
        assert!(!vm_peripherals(&restored).contains(&"virtio-drive0".to_owned()));
        assert!(!vm_block_nodes(&restored).contains(&"drive0".to_owned()));
        assert_eq!(restored.hotplug_state().plugged_ids(), ["net0"]);
        assert_eq!(restored.hotplug_state().free_root_ports(), ["rp0", "rp1"]);

        finish(restored.shutdown(GRACE)).expect("shutdown restored");
        drop(restored);
        assert_no_children_in(dir.path());
    }
}

/// A pending removal survives save and restore: QEMU still has the device, so the restored
/// VM cold-plugs it (the load would fail otherwise) and its state still knows the removal is
/// pending. The removal is made pending without a guest: a hot-plugged device sits in an
/// unpowered slot and is released at once, but a `system_reset` powers the slot, and then
/// nothing answers the `device_del` (QEMU 10.0.2).
#[test]
fn arm64_a_pending_removal_survives_save_and_restore() {
    let dir = TempDir::new();
    let mut assembled = assemble(&spec(&dir, "run-source")).expect("assemble");
    // Kata's -no-reboot would make the reset below end QEMU.
    assembled.config.knobs.no_reboot = false;
    let mut source = Vm::launch(assembled, LaunchOptions::default()).expect("launch");
    let drive = drive0(&dir);
    source
        .hotplug()
        .add_block(&drive, BlockDriver::VirtioBlk, Placement::RootPort)
        .expect("hot-plug virtio-blk");
    source
        .qmp()
        .execute_raw("system_reset", json!({}))
        .expect("system_reset");
    let err = source
        .hotplug()
        .unplug("virtio-drive0", Duration::from_secs(1))
        .expect_err("nothing answers the device_del");
    assert!(err.to_string().contains("QMP timeout"), "{err}");
    assert_eq!(
        source.hotplug_state().pending_removal_ids(),
        ["virtio-drive0"]
    );
    let pending = source
        .hotplug_state()
        .pending_removal("virtio-drive0")
        .cloned();

    let state = dir.join("vm.state");
    source.save(&state).expect("save");
    source.shutdown(GRACE).expect("shutdown source");
    drop(source);

    let mut restored = Vm::restore(
        assemble(&spec(&dir, "run-restored")).expect("assemble"),
        &state,
        LaunchOptions::default(),
    )
    .unwrap_or_else(|e| panic!("restore: {e}"));
    assert!(vm_peripherals(&restored).contains(&"virtio-drive0".to_owned()));
    assert!(vm_block_nodes(&restored).contains(&"drive0".to_owned()));
    assert_eq!(
        restored
            .hotplug_state()
            .pending_removal("virtio-drive0")
            .cloned(),
        pending
    );
    assert_eq!(restored.hotplug_state().free_root_ports(), ["rp1"]);
    assert!(matches!(
        restored
            .hotplug()
            .add_block(&drive, BlockDriver::VirtioBlk, Placement::RootPort),
        Err(HotplugError::RemovalPending { .. })
    ));
    assert_eq!(
        restored.hotplug().reconcile().expect("reconcile"),
        Vec::<String>::new()
    );
    restored.shutdown(GRACE).expect("shutdown restored");
    drop(restored);
    assert_no_children_in(dir.path());
}
