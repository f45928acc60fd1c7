//! A save that cannot complete in time, against real QEMU (arm64 `virt`, TCG): the migration
//! is held before its switchover (capability `pause-before-switchover`: QEMU stops the guest,
//! `finish-migrate`, and waits for a `migrate-continue` that never comes), so
//! `Vm::save_within` with a 1 s wait times out. The save is cancelled (`query-migrate` ends
//! `cancelled`), the guest is left as it was (a running guest runs again, a paused one stays
//! paused), neither the state file nor a partial file remains, and without the hold the same
//! VM saves.
//!
//! (A bandwidth limit does not hold a save to a file on QEMU 10.0.2: `max-bandwidth` 1 B/s
//! still saves a guest-less VM at once.)

use std::path::Path;
use std::time::Duration;

use hvarch::{assemble, GuestArch, LaunchOptions, Vm, VmError, VmSpec};
use hvarch_tests::query::vm_qmp;
use hvarch_tests::spec::runnable;
use hvarch_tests::{assert_no_children_in, TempDir};
use serde_json::json;

const GRACE: Duration = Duration::from_millis(100);

fn launch(dir: &TempDir) -> Vm {
    let mut spec = VmSpec::kata_default();
    spec.arch = Some(GuestArch::Aarch64);
    spec.hypervisor.memory_mb = 256;
    runnable(&mut spec, dir);
    Vm::launch(assemble(&spec).expect("assemble"), LaunchOptions::default()).expect("launch")
}

/// The names of the files in `dir`.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn hold_before_switchover(vm: &Vm, hold: bool) {
    vm_qmp(
        vm,
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "pause-before-switchover", "state": hold}]}),
    );
}

/// Saves with a migration that cannot finish and checks the cancelled save left `status` and
/// no file.
fn held_save_is_cancelled(vm: &Vm, dir: &TempDir, status: &str) {
    let states = dir.join("states");
    std::fs::create_dir_all(&states).expect("states dir");
    let path = states.join("vm.state");
    hold_before_switchover(vm, true);
    let err = vm
        .save_within(&path, Duration::from_secs(1))
        .expect_err("a save held before switchover cannot complete");
    assert!(
        matches!(&err, VmError::Migration { reason } if reason.contains("not completed within")),
        "{err}"
    );
    assert_eq!(
        vm_qmp(vm, "query-migrate", json!({}))["status"],
        "cancelled"
    );
    assert_eq!(vm.status().expect("status"), status);
    assert_eq!(files(&states), Vec::<String>::new(), "no file left");

    // Without the hold, the same VM saves.
    hold_before_switchover(vm, false);
    vm.save_within(&path, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("save after the cancelled one: {e}"));
    assert_eq!(files(&states), ["vm.state", "vm.state.hotplug.json"]);
}

#[test]
fn a_running_guest_whose_save_times_out_keeps_running() {
    let dir = TempDir::new();
    let mut vm = launch(&dir);
    vm.resume().expect("cont");
    assert_eq!(vm.status().expect("status"), "running");
    held_save_is_cancelled(&vm, &dir, "running");
    vm.shutdown(GRACE).expect("shutdown");
    drop(vm);
    assert_no_children_in(dir.path());
}

#[test]
fn a_paused_guest_whose_save_times_out_stays_paused() {
    let dir = TempDir::new();
    let mut vm = launch(&dir);
    assert_eq!(vm.status().expect("status"), "prelaunch");
    held_save_is_cancelled(&vm, &dir, "prelaunch");
    vm.shutdown(GRACE).expect("shutdown");
    drop(vm);
    assert_no_children_in(dir.path());
}
