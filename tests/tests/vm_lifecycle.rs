//! The VM lifecycle against real QEMU (TCG, paused with `-S`; never KVM): launch, graceful
//! and idempotent shutdown, reaping on drop (a panicking test included), save to a file and
//! restore into a new `Vm`, and the faults: QEMU killed mid-operation, a refused option, a
//! QEMU that never greets, a state file that does not load.
//!
//! After every test no QEMU child of this process mentions the test's directory and the
//! runtime directory (sockets, pidfile) is gone. Tests run in parallel, so each one checks
//! its own children (by directory), not "no children at all".

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hvarch::{assemble, Assembled, GuestArch, LaunchOptions, Vm, VmError, VmSpec};
use hvarch_tests::query::{vm_pci_ids, vm_peripherals};
use hvarch_tests::spec::runnable;
use hvarch_tests::{assert_no_children_in, assert_reaped, sigkill, within, TempDir};
use serde_json::json;

/// A short grace: a guest-less paused VM ignores `system_powerdown`, so `shutdown` falls
/// back to `quit` after it.
const GRACE: Duration = Duration::from_millis(100);

/// A test VM: the Kata default spec for `arch`, made runnable in `dir`, with 256 MiB of RAM
/// (less to save).
fn spec(arch: GuestArch, dir: &TempDir) -> VmSpec {
    let mut spec = VmSpec::kata_default();
    spec.arch = Some(arch);
    spec.hypervisor.memory_mb = 256;
    runnable(&mut spec, dir);
    spec
}

fn assembled(spec: &VmSpec) -> Assembled {
    assemble(spec).unwrap_or_else(|e| panic!("assemble {}: {e}", spec.id))
}

fn launch(spec: &VmSpec) -> Vm {
    Vm::launch(assembled(spec), LaunchOptions::default())
        .unwrap_or_else(|e| panic!("launch {}: {e}", spec.id))
}

/// Checks what every test must leave behind: nothing.
fn assert_clean(dir: &TempDir, runtime: &Path) {
    assert_no_children_in(dir.path());
    assert!(
        !runtime.exists(),
        "runtime dir {} left behind",
        runtime.display()
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn launch_answers_qmp_with_private_runtime_files_and_a_pidfile() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let mut vm = launch(&spec);
    let paths = vm.paths().clone();

    assert_eq!(vm.status().expect("query-status"), "prelaunch");
    vm.check().expect("a healthy VM");
    let version = vm.qmp().version();
    assert!(version.at_least(9, 1), "{version:?}");

    assert_eq!(mode(&paths.dir), 0o700, "runtime dir mode");
    let socket = std::fs::symlink_metadata(&paths.qmp).expect("QMP socket");
    assert!(socket.file_type().is_socket());
    assert_eq!(mode(&paths.qmp), 0o600, "QMP socket mode");
    let pid: u32 = std::fs::read_to_string(&paths.pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("a pid in the pidfile");
    assert_eq!(pid, vm.pid());
    // Sockets QEMU creates itself (the console) are private too: umask 077 in the child
    // gives 0700 (a socket's x bit means nothing; group and others get no access).
    assert_eq!(mode(&paths.console) & 0o077, 0, "console socket mode");

    vm.shutdown(GRACE).expect("shutdown");
    drop(vm);
    assert_reaped(pid);
    assert_clean(&dir, &paths.dir);
}

#[test]
fn shutdown_is_graceful_then_forceful_and_idempotent() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let mut vm = launch(&spec);
    let pid = vm.pid();
    let runtime = vm.paths().dir.clone();

    let started = Instant::now();
    let first = vm.shutdown(GRACE).expect("first shutdown");
    // powerdown is ignored by a guest-less VM; `quit` ends QEMU (a clean exit status, checked
    // below, rules out the kill stage); the bound only rules out waiting on a 30 s timeout.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(first.success(), "QEMU quit cleanly: {first}");
    assert_eq!(vm.try_wait().expect("try_wait"), Some(first));
    let second = vm.shutdown(GRACE).expect("second shutdown");
    assert_eq!(first, second);
    // QMP is closed: commands fail cleanly instead of hanging.
    let err = vm.status().unwrap_err();
    assert!(
        matches!(err, VmError::Qmp(hvarch_qmp::Error::Disconnected)),
        "{err}"
    );
    drop(vm);
    assert_reaped(pid);
    assert_clean(&dir, &runtime);
}

#[test]
fn drop_reaps_qemu_and_removes_the_runtime_dir() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let vm = launch(&spec);
    let pid = vm.pid();
    let runtime = vm.paths().dir.clone();
    assert!(runtime.join("qmp.sock").exists());
    drop(vm);
    assert_reaped(pid);
    assert_clean(&dir, &runtime);
}

#[test]
fn drop_reaps_qemu_when_the_owner_panics() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let seen: Arc<Mutex<Option<(u32, PathBuf)>>> = Arc::default();
    let inside = Arc::clone(&seen);
    let outcome = std::panic::catch_unwind(move || {
        let vm = launch(&spec);
        *inside.lock().expect("lock") = Some((vm.pid(), vm.paths().dir.clone()));
        assert_eq!(vm.status().expect("status"), "prelaunch");
        panic!("a test failing while it owns a Vm");
    });
    assert!(outcome.is_err(), "the scope panicked");
    let (pid, runtime) = seen
        .lock()
        .expect("lock")
        .clone()
        .expect("the Vm was launched");
    assert_reaped(pid);
    assert_clean(&dir, &runtime);
}

/// Saves a paused VM, restores it into a new `Vm`, and compares what QEMU reports.
fn save_and_restore(arch: GuestArch) {
    let dir = TempDir::new();
    let spec = spec(arch, &dir);
    let state = dir.join("vm.state");
    let mut source = launch(&spec);
    source.pause().expect("stop");
    let status = source.status().expect("status");
    let devices = vm_peripherals(&source);
    let pci = vm_pci_ids(&source);
    assert!(devices.contains(&"rng0-dev".to_owned()), "{devices:?}");

    source.save(&state).expect("save");
    let saved = std::fs::metadata(&state).expect("the state file");
    assert!(saved.len() > 0);
    assert_eq!(mode(&state), 0o600, "state file mode");
    assert_eq!(source.status().expect("status after save"), "postmigrate");
    let source_pid = source.pid();
    let source_runtime = source.paths().dir.clone();
    source.shutdown(GRACE).expect("shutdown the source");
    drop(source);
    assert_reaped(source_pid);

    // The same spec, with its own runtime directory.
    let mut again = spec.clone();
    again.runtime_dir = Some(dir.join("run-restored"));
    let mut restored = Vm::restore(assembled(&again), &state, LaunchOptions::default())
        .unwrap_or_else(|e| panic!("restore: {e}"));
    let info = restored
        .qmp()
        .execute_raw("query-migrate", json!({}))
        .expect("query-migrate");
    assert_eq!(info["status"], "completed", "{info}");
    assert_eq!(restored.status().expect("status"), status);
    restored.check().expect("healthy after restore");
    assert_eq!(vm_peripherals(&restored), devices);
    assert_eq!(vm_pci_ids(&restored), pci);
    // The restored VM is a working VM: it runs and pauses on request.
    restored.resume().expect("cont");
    assert_eq!(restored.status().expect("status"), "running");
    restored.pause().expect("stop");

    let pid = restored.pid();
    let runtime = restored.paths().dir.clone();
    restored.shutdown(GRACE).expect("shutdown");
    drop(restored);
    assert_reaped(pid);
    assert_clean(&dir, &runtime);
    assert!(!source_runtime.exists());
}

#[test]
fn save_and_restore_arm64_without_migration_capabilities() {
    let arch = hvarch::backend(GuestArch::Aarch64, &Default::default()).expect("backend");
    assert!(arch.migration_capabilities().is_empty());
    assert_eq!(arch.migration_wait_timeout(), Duration::from_secs(10));
    save_and_restore(GuestArch::Aarch64);
}

#[test]
fn save_and_restore_x86_64_with_x_ignore_shared_on_both_sides() {
    let arch = hvarch::backend(GuestArch::X86_64, &Default::default()).expect("backend");
    assert_eq!(arch.migration_capabilities().len(), 1);
    save_and_restore(GuestArch::X86_64);
}

#[test]
fn a_failed_save_leaves_no_file_and_the_vm_usable() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let mut vm = launch(&spec);
    let state = dir.join("no-such-dir/vm.state");
    let err = vm.save(&state).unwrap_err();
    assert!(
        matches!(err, VmError::Migration { .. } | VmError::Qmp(_)),
        "{err}"
    );
    assert!(!state.exists());
    assert_eq!(vm.status().expect("still answers"), "prelaunch");
    let runtime = vm.paths().dir.clone();
    vm.shutdown(GRACE).expect("shutdown");
    drop(vm);
    assert_clean(&dir, &runtime);
}

#[test]
fn a_state_that_does_not_load_is_a_migration_error_with_no_child_left() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let runtime = spec.runtime_dir();
    let state = dir.join("garbage.state");
    std::fs::write(&state, b"this is not a QEMU migration stream").expect("write");
    let err = within(Duration::from_secs(20), "restore of garbage", {
        let (assembled, state) = (assembled(&spec), state.clone());
        move || Vm::restore(assembled, &state, LaunchOptions::default()).map(|_| ())
    })
    .unwrap_err();
    assert!(matches!(err, VmError::Migration { .. }), "{err}");
    assert_clean(&dir, &runtime);

    let err = Vm::restore(
        assembled(&spec),
        dir.join("missing.state"),
        LaunchOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, VmError::Migration { reason } if reason.contains("missing.state")),
        "{err}"
    );
    assert_clean(&dir, &runtime);
}

#[test]
fn qemu_killed_mid_operation_is_a_clean_error_without_a_hang() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let vm = launch(&spec);
    let pid = vm.pid();
    let runtime = vm.paths().dir.clone();
    // A save throttled to 64 KiB/s takes seconds: QEMU dies in the middle of it.
    vm.qmp()
        .execute_raw("migrate-set-parameters", json!({"max-bandwidth": 64 << 10}))
        .expect("throttle migration");
    let state = dir.join("vm.state");
    let (vm, err) = within(Duration::from_secs(15), "save while QEMU is killed", {
        let state = state.clone();
        move || {
            let killer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                sigkill(pid);
            });
            let result = vm.save(&state);
            killer.join().expect("killer thread");
            (vm, result)
        }
    });
    let err = err.expect_err("the save cannot complete: QEMU was killed");
    assert!(
        matches!(
            err,
            VmError::Qmp(hvarch_qmp::Error::Disconnected) | VmError::NotRunning { .. }
        ),
        "{err}"
    );
    assert!(!state.exists(), "the partial state file is removed");

    // Every later operation fails the same way, promptly; shutdown reports the kill.
    let mut vm = within(
        Duration::from_secs(10),
        "operations on a dead QEMU",
        move || {
            for err in [
                vm.status().unwrap_err(),
                vm.pause().unwrap_err(),
                vm.save(dir_free_path()).unwrap_err(),
            ] {
                assert!(
                    matches!(
                        err,
                        VmError::Qmp(hvarch_qmp::Error::Disconnected) | VmError::NotRunning { .. }
                    ),
                    "{err}"
                );
            }
            vm
        },
    );
    let status = vm.shutdown(GRACE).expect("shutdown of a dead QEMU");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    drop(vm);
    assert_reaped(pid);
    assert_clean(&dir, &runtime);
}

/// A path no save may create (used once QEMU is gone, so nothing is written).
fn dir_free_path() -> PathBuf {
    std::env::temp_dir().join(format!("hvarch-never-written-{}.state", std::process::id()))
}

#[test]
fn a_refused_option_is_a_launch_error_holding_qemus_stderr() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let runtime = spec.runtime_dir();
    let options = LaunchOptions {
        extra_args: vec!["-device".into(), "virtio-rng-pci,no-such-prop=on".into()],
        ..LaunchOptions::default()
    };
    let started = Instant::now();
    let err = Vm::launch(assembled(&spec), options).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(15));
    match &err {
        VmError::Launch { stderr, .. } => assert!(stderr.contains("no-such-prop"), "{stderr}"),
        other => panic!("not a launch error: {other}"),
    }
    assert!(err.to_string().contains("no-such-prop"), "{err}");
    assert_clean(&dir, &runtime);
}

#[test]
fn a_qemu_that_never_greets_is_a_prompt_launch_timeout() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let runtime = spec.runtime_dir();
    // A server chardev with `wait=on` blocks QEMU's start-up (before the main loop, hence
    // before the QMP greeting) until a client connects: none ever does.
    let blocker = dir.join("blocker.sock");
    let options = LaunchOptions {
        qmp: hvarch_qmp::Config {
            greeting_timeout: Duration::from_millis(500),
            ..hvarch_qmp::Config::default()
        },
        extra_args: vec![
            "-chardev".into(),
            format!(
                "socket,id=blocker,path={},server=on,wait=on",
                blocker.display()
            ),
        ],
        ..LaunchOptions::default()
    };
    let started = Instant::now();
    let err = Vm::launch(assembled(&spec), options).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    match &err {
        VmError::Launch { reason, stderr } => {
            assert!(reason.contains("not ready"), "{reason}");
            assert!(stderr.contains("waiting for connection"), "{stderr}");
        }
        other => panic!("not a launch error: {other}"),
    }
    assert_clean(&dir, &runtime);
}

#[test]
fn a_greeting_timeout_shorter_than_qemus_start_is_a_launch_error() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let runtime = spec.runtime_dir();
    let options = LaunchOptions {
        qmp: hvarch_qmp::Config {
            // QEMU needs ~20 ms from exec to its greeting.
            greeting_timeout: Duration::from_millis(1),
            ..hvarch_qmp::Config::default()
        },
        ..LaunchOptions::default()
    };
    let err = Vm::launch(assembled(&spec), options).unwrap_err();
    assert!(matches!(err, VmError::Launch { .. }), "{err}");
    assert_clean(&dir, &runtime);
}

#[test]
fn a_missing_qemu_binary_is_a_launch_error_leaving_no_socket() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let runtime = spec.runtime_dir();
    let mut vm = assembled(&spec);
    vm.qemu_path = dir.join("no-such-qemu");
    let err = Vm::launch(vm, LaunchOptions::default()).unwrap_err();
    assert!(
        matches!(&err, VmError::Launch { reason, .. } if reason.contains("no-such-qemu")),
        "{err}"
    );
    // The QMP socket was bound before the exec failed: it goes with the runtime dir.
    assert_clean(&dir, &runtime);
}

#[test]
fn shutdown_of_a_hung_qemu_ends_in_sigkill_within_bounded_time() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let mut vm = launch(&spec);
    let pid = vm.pid();
    let runtime = vm.paths().dir.clone();
    // A stopped process answers nothing: powerdown and quit time out, SIGKILL ends it.
    let pid_t = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our QEMU child.
    let rc = unsafe { libc::kill(pid_t, libc::SIGSTOP) };
    assert_eq!(rc, 0);
    let started = Instant::now();
    let status = within(
        Duration::from_secs(15),
        "shutdown of a hung QEMU",
        move || {
            let status = vm.shutdown(GRACE).expect("shutdown");
            drop(vm);
            status
        },
    );
    let elapsed = started.elapsed();
    // powerdown (bounded by the grace), quit (2 s), the wait (3 s), then SIGKILL: well under
    // the 30 s a QMP command timeout would take; the slack is for a loaded CI machine.
    assert!(elapsed < Duration::from_secs(14), "{elapsed:?}");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert_reaped(pid);
    assert_clean(&dir, &runtime);
}
