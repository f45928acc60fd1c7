//! The VM lifecycle against real QEMU (TCG, paused with `-S`; never KVM): launch, graceful
//! and idempotent shutdown, reaping on drop (a panicking test included), save to a file and
//! restore into a new `Vm`, and the faults: QEMU killed mid-operation, a refused option, a
//! QEMU that never greets, a state file that does not load.
//!
//! After every test no QEMU child of this process mentions the test's directory and the
//! runtime directory (sockets, pidfile) is gone. Tests run in parallel, so each one checks
//! its own children (by directory), not "no children at all".

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hvarch::{
    assemble, Assembled, EndedBy, GuestArch, LaunchOptions, RuntimeDirError, Vm, VmError, VmSpec,
};
use hvarch_tests::query::{vm_pci_ids, vm_peripherals, vm_qmp};
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

hvarch_tests::two_drivers! {
    #[test]
    fn shutdown_is_graceful_then_forceful_and_idempotent() {
        let dir = TempDir::new();
        let spec = spec(GuestArch::Aarch64, &dir);
        let mut vm = finish(TestVm::launch(assembled(&spec), LaunchOptions::default())).expect("launch");
        let pid = vm.pid();
        let runtime = vm.paths().dir.clone();

        let started = Instant::now();
        let first = finish(vm.shutdown(GRACE)).expect("first shutdown");
        // powerdown is ignored by a guest-less VM; `quit` ends QEMU (a clean exit status, checked
        // below, rules out the kill stage); the bound only rules out waiting on a 30 s timeout.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        assert!(first.status.success(), "QEMU quit cleanly: {first}");
        // A guest-less VM cannot power off: the `quit` rung ended it, and the outcome says so.
        assert_eq!(first.ended_by, EndedBy::Quit, "{first}");
        assert_eq!(first.reason.as_deref(), Some("host-qmp-quit"), "{first}");
        assert_eq!(vm.try_wait().expect("try_wait"), Some(first.status));
        let second = finish(vm.shutdown(GRACE)).expect("second shutdown");
        assert_eq!(first, second);
        // QMP is closed: commands fail cleanly instead of hanging.
        let err = finish(vm.status()).unwrap_err();
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
        let vm = finish(TestVm::launch(assembled(&spec), LaunchOptions::default())).expect("launch");
        let pid = vm.pid();
        let runtime = vm.paths().dir.clone();
        assert!(runtime.join("qmp.sock").exists());
        drop(vm);
        await_drop(pid, &runtime);
        assert_clean(&dir, &runtime);
    }

    /// Saves a paused VM, restores it into a new VM, and compares what QEMU reports.
    fn save_and_restore(arch: GuestArch) {
        let dir = TempDir::new();
        let spec = spec(arch, &dir);
        let state = dir.join("vm.state");
        let mut source = finish(TestVm::launch(assembled(&spec), LaunchOptions::default())).expect("launch");
        finish(source.pause()).expect("stop");
        let status = finish(source.status()).expect("status");
        let devices = vm_peripherals(&source);
        let pci = vm_pci_ids(&source);
        assert!(devices.contains(&"rng0-dev".to_owned()), "{devices:?}");

        finish(source.save(&state)).expect("save");
        let saved = std::fs::metadata(&state).expect("the state file");
        assert!(saved.len() > 0);
        assert_eq!(mode(&state), 0o600, "state file mode");
        assert_eq!(finish(source.status()).expect("status after save"), "postmigrate");
        let source_pid = source.pid();
        let source_runtime = source.paths().dir.clone();
        finish(source.shutdown(GRACE)).expect("shutdown the source");
        drop(source);
        assert_reaped(source_pid);

        // The same spec, with its own runtime directory.
        let mut again = spec.clone();
        again.runtime_dir = Some(dir.join("run-restored"));
        let mut restored = finish(TestVm::restore(assembled(&again), &state, LaunchOptions::default()))
            .unwrap_or_else(|e| panic!("restore: {e}"));
        let info = vm_qmp(&restored, "query-migrate", json!({}));
        assert_eq!(info["status"], "completed", "{info}");
        assert_eq!(finish(restored.status()).expect("status"), status);
        finish(restored.check()).expect("healthy after restore");
        assert_eq!(vm_peripherals(&restored), devices);
        assert_eq!(vm_pci_ids(&restored), pci);
        // The restored VM is a working VM: it runs and pauses on request.
        finish(restored.resume()).expect("cont");
        assert_eq!(finish(restored.status()).expect("status"), "running");
        finish(restored.pause()).expect("stop");

        let pid = restored.pid();
        let runtime = restored.paths().dir.clone();
        finish(restored.shutdown(GRACE)).expect("shutdown");
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
        let mut vm = finish(TestVm::launch(assembled(&spec), LaunchOptions::default())).expect("launch");
        let state = dir.join("no-such-dir/vm.state");
        let err = finish(vm.save(&state)).unwrap_err();
        assert!(
            matches!(err, VmError::Migration { .. } | VmError::Qmp(_)),
            "{err}"
        );
        assert!(!state.exists());
        assert_eq!(finish(vm.status()).expect("still answers"), "prelaunch");
        let runtime = vm.paths().dir.clone();
        finish(vm.shutdown(GRACE)).expect("shutdown");
        drop(vm);
        assert_clean(&dir, &runtime);
    }
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
    let outcome = vm.shutdown(GRACE).expect("shutdown of a dead QEMU");
    assert_eq!(outcome.status.signal(), Some(libc::SIGKILL));
    // Not hvarch's kill: the outcome says QEMU ended without hvarch asking.
    assert_eq!(outcome.ended_by, EndedBy::Other, "{outcome}");
    assert!(
        outcome.to_string().contains("signal hvarch did not send"),
        "{outcome}"
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
    let outcome = within(
        Duration::from_secs(15),
        "shutdown of a hung QEMU",
        move || {
            let outcome = vm.shutdown(GRACE).expect("shutdown");
            drop(vm);
            outcome
        },
    );
    let elapsed = started.elapsed();
    // powerdown (bounded by the grace), quit (2 s), the wait (3 s), then SIGKILL: well under
    // the 30 s a QMP command timeout would take; the slack is for a loaded CI machine.
    assert!(elapsed < Duration::from_secs(14), "{elapsed:?}");
    assert_eq!(outcome.status.signal(), Some(libc::SIGKILL));
    assert_eq!(outcome.ended_by, EndedBy::Killed, "{outcome}");
    assert_reaped(pid);
    assert_clean(&dir, &runtime);
}

// ---- The runtime directory: hvarch removes only what it created. ----

/// What a user keeps in the directory they name as `runtime_dir`.
const DISK: &[u8] = b"the user's disk image, not hvarch's to remove";

/// A test directory and an arm64 [`spec`] whose runtime dir already exists: a private
/// directory of the user's, holding `disk.img`.
fn in_user_runtime_dir() -> (TempDir, VmSpec, PathBuf) {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let run = spec.runtime_dir();
    std::fs::create_dir(&run).expect("create the user's directory");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::write(run.join("disk.img"), DISK).expect("write disk.img");
    (dir, spec, run)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The user's directory holds exactly what it held before hvarch used it.
fn assert_untouched(run: &Path) {
    assert_eq!(entries(run), ["disk.img"], "in {}", run.display());
    assert_eq!(std::fs::read(run.join("disk.img")).expect("disk.img"), DISK);
    assert_eq!(mode(run), 0o700, "its mode is left alone");
}

#[test]
fn an_existing_runtime_dir_keeps_its_files_through_a_failed_launch() {
    let (dir, spec, run) = in_user_runtime_dir();
    let options = LaunchOptions {
        extra_args: vec!["-device".into(), "virtio-rng-pci,no-such-prop=on".into()],
        ..LaunchOptions::default()
    };
    let err = Vm::launch(assembled(&spec), options).unwrap_err();
    assert!(matches!(err, VmError::Launch { .. }), "{err}");
    assert_no_children_in(dir.path());
    assert_untouched(&run);
}

#[test]
fn an_existing_runtime_dir_keeps_its_files_through_a_shutdown() {
    let (_dir, spec, run) = in_user_runtime_dir();
    let mut vm = launch(&spec);
    assert!(!vm.owns_runtime_dir());
    let during = entries(&run);
    for name in ["disk.img", "hvarch.lock", "qmp.sock", "qemu.stderr", "pid"] {
        assert!(during.iter().any(|n| n == name), "{name} in {during:?}");
    }
    let pid = vm.pid();
    vm.shutdown(GRACE).expect("shutdown");
    drop(vm);
    assert_reaped(pid);
    assert_untouched(&run);
}

/// As if hvarch had been killed with QEMU ready: everything it and QEMU created is left, with
/// its record. The next VM there removes those leftovers (QEMU's pid file and sockets too: their
/// identities were recorded once QEMU was ready), and the user's files stay.
#[test]
fn the_next_vm_removes_what_a_killed_hvarch_left_in_the_users_directory() {
    let (_dir, spec, run) = in_user_runtime_dir();
    let left = LaunchOptions {
        remove_runtime_dir: false,
        ..LaunchOptions::default()
    };
    let vm = Vm::launch(assembled(&spec), left).expect("launch");
    let pid = vm.pid();
    drop(vm);
    assert_reaped(pid);
    let record = std::fs::read_to_string(run.join("hvarch.lock")).expect("the record");
    for name in ["qmp.sock", "qemu.stderr", "pid"] {
        assert!(
            record
                .lines()
                .any(|l| l.starts_with("made ") && l.ends_with(&format!(" {name}"))),
            "{name}'s identity in {record}"
        );
    }
    let vm = launch(&spec);
    let pid = vm.pid();
    drop(vm);
    assert_reaped(pid);
    assert_untouched(&run);
}

#[test]
fn an_existing_runtime_dir_keeps_its_files_through_a_drop() {
    let (_dir, spec, run) = in_user_runtime_dir();
    let vm = launch(&spec);
    let pid = vm.pid();
    drop(vm);
    assert_reaped(pid);
    assert_untouched(&run);
}

#[test]
fn an_existing_runtime_dir_keeps_its_files_through_a_panic() {
    let (_dir, spec, run) = in_user_runtime_dir();
    let seen: Arc<Mutex<Option<u32>>> = Arc::default();
    let inside = Arc::clone(&seen);
    let outcome = std::panic::catch_unwind(move || {
        let vm = launch(&spec);
        *inside.lock().expect("lock") = Some(vm.pid());
        panic!("a test failing while it owns a Vm in the user's directory");
    });
    assert!(outcome.is_err(), "the scope panicked");
    let pid = seen.lock().expect("lock").expect("the Vm was launched");
    assert_reaped(pid);
    assert_untouched(&run);
}

#[test]
fn a_symlink_planted_at_qemu_stderr_is_refused_and_its_target_untouched() {
    let (dir, spec, run) = in_user_runtime_dir();
    let target = dir.join("precious.txt");
    std::fs::write(&target, "precious").expect("write");
    std::os::unix::fs::symlink(&target, run.join("qemu.stderr")).expect("plant");
    let err = Vm::launch(assembled(&spec), LaunchOptions::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            VmError::RuntimeDir(RuntimeDirError::Occupied { name, kind, .. })
                if name == "qemu.stderr" && *kind == "a symbolic link"
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains(run.to_str().expect("utf-8")), "{text}");
    assert_eq!(
        std::fs::read_to_string(&target).expect("target"),
        "precious"
    );
    assert_eq!(entries(&run), ["disk.img", "qemu.stderr"]);
    assert_no_children_in(dir.path());
}

#[test]
fn a_symlink_as_the_runtime_dir_is_refused() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let real = dir.join("real");
    std::fs::create_dir(&real).expect("create");
    std::fs::write(real.join("disk.img"), DISK).expect("write");
    let run = spec.runtime_dir();
    std::os::unix::fs::symlink(&real, &run).expect("plant");
    let err = Vm::launch(assembled(&spec), LaunchOptions::default()).unwrap_err();
    assert!(
        matches!(&err, VmError::RuntimeDir(RuntimeDirError::Symlink { dir: d }) if *d == run),
        "{err}"
    );
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(
        entries(&real),
        ["disk.img"],
        "nothing created through the link"
    );
    assert!(std::fs::symlink_metadata(&run)
        .expect("the link")
        .file_type()
        .is_symlink());
    assert_no_children_in(dir.path());
}

#[test]
fn a_runtime_dir_others_may_write_or_another_user_owns_is_refused() {
    let (dir, spec, run) = in_user_runtime_dir();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = Vm::launch(assembled(&spec), LaunchOptions::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            VmError::RuntimeDir(RuntimeDirError::Writable { mode: 0o777, .. })
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(run.to_str().expect("utf-8")) && text.contains("writable by group or others"),
        "{text}"
    );
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let c = std::ffi::CString::new(run.to_str().expect("utf-8")).expect("no NUL");
        // SAFETY: chown of a directory this test created.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
        let err = Vm::launch(assembled(&spec), LaunchOptions::default()).unwrap_err();
        assert!(
            matches!(
                &err,
                VmError::RuntimeDir(RuntimeDirError::ForeignOwner { owner: 65534, .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        // SAFETY: as above, back to root.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 0, 0) }, 0);
    }
    assert_untouched(&run);
    assert_no_children_in(dir.path());
}

#[test]
fn a_second_vm_on_the_same_runtime_dir_is_refused_while_the_first_runs() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let runtime = spec.runtime_dir();
    let mut first = launch(&spec);
    let first_socket = socket_inode(&runtime);
    let err = Vm::launch(assembled(&spec), LaunchOptions::default()).unwrap_err();
    let me = std::process::id();
    assert!(
        matches!(&err, VmError::RuntimeDir(RuntimeDirError::Locked { dir: d, pid: Some(p) })
            if *d == runtime && *p == me),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(runtime.to_str().expect("utf-8")) && text.contains(&format!("pid {me}")),
        "{text}"
    );
    // The refused VM took nothing from the first: its socket is the same file (today's bug
    // was a second launch unlinking and rebinding it), and it still answers.
    assert_eq!(socket_inode(&runtime), first_socket);
    assert_eq!(
        first.status().expect("the first still answers"),
        "prelaunch"
    );
    let pid = first.pid();
    first.shutdown(GRACE).expect("shutdown");
    drop(first);
    assert_reaped(pid);

    let mut second = launch(&spec);
    assert_eq!(second.status().expect("status"), "prelaunch");
    second.shutdown(GRACE).expect("shutdown");
    drop(second);
    assert_clean(&dir, &runtime);
}

/// The inode of `<runtime>/qmp.sock`.
fn socket_inode(runtime: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(runtime.join("qmp.sock")).expect("qmp.sock");
    assert!(meta.file_type().is_socket());
    meta.ino()
}

// ---- QEMU's process: its descriptors, its process group, its parent. ----

/// Opens `path` without close-on-exec (as an embedder that inherited the descriptor would
/// hold it), at a number above any QEMU maps; closed on drop.
fn open_inheritable(path: &Path) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd};
    let file = std::fs::File::open(path).expect("open");
    // SAFETY: F_DUPFD (no close-on-exec, on purpose) of a descriptor we hold.
    let fd = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, 200) };
    assert!(fd >= 200, "{}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor nobody else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// Where each of `pid`'s descriptors points.
fn fd_targets(pid: u32) -> Vec<(u32, String)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((n, target.to_string_lossy().into_owned()))
        })
        .collect()
}

#[test]
fn only_the_descriptors_hvarch_maps_reach_qemu() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let secret = dir.join("inherited-secret.txt");
    std::fs::write(&secret, "not QEMU's").expect("write");
    let inherited = open_inheritable(&secret);
    let mut vm = launch(&spec);
    let targets = fd_targets(vm.pid());
    assert!(
        !targets.iter().any(|(_, t)| t.contains("inherited-secret")),
        "an inherited descriptor leaked into QEMU: {targets:?}"
    );
    // What hvarch maps is there: the QMP listening socket at fd 3.
    assert!(
        targets
            .iter()
            .any(|(n, t)| *n == 3 && t.starts_with("socket:")),
        "{targets:?}"
    );
    drop(inherited);
    vm.shutdown(GRACE).expect("shutdown");
}

/// The process group of `pid` (field 5 of `/proc/<pid>/stat`).
fn process_group(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after
        .split_whitespace()
        .nth(2)
        .and_then(|g| g.parse().ok())
        .expect("pgrp")
}

#[test]
fn qemu_runs_in_its_own_process_group() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let mut vm = launch(&spec);
    let pid = vm.pid();
    assert_eq!(process_group(pid), pid, "QEMU leads its own group");
    assert_ne!(process_group(pid), process_group(std::process::id()));
    vm.shutdown(GRACE).expect("shutdown");
}

#[test]
fn a_vm_launched_from_a_short_lived_thread_outlives_the_thread() {
    let dir = TempDir::new();
    let spec = spec(GuestArch::Aarch64, &dir);
    let (vm, tid) = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        (launch(&spec), tid)
    })
    .join()
    .expect("the launching thread");
    // The kernel sends the parent-death signal as the thread is released: wait for that.
    within(
        Duration::from_secs(30),
        "the launching thread's release",
        move || {
            while Path::new(&format!("/proc/self/task/{tid}")).exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        },
    );
    let mut vm = vm;
    let pid = vm.pid();
    assert_eq!(
        vm.try_wait().expect("try_wait"),
        None,
        "QEMU died with the thread"
    );
    assert_eq!(vm.status().expect("QEMU still answers"), "prelaunch");
    vm.shutdown(GRACE).expect("shutdown");
    drop(vm);
    assert_reaped(pid);
}

// ---- Extra monitors: typed, rendered by the device model. ----

#[test]
fn extra_monitors_in_a_runtime_dir_holding_comma_and_equals_inject_nothing() {
    use hvarch::hvarch_devices::config::{Monitor, MonitorEndpoint};

    let dir = TempDir::new();
    let mut spec = spec(GuestArch::Aarch64, &dir);
    // Unescaped, `,id=evil` would end the path and add an option.
    let runtime = dir.join("run,id=evil,x=y");
    spec.runtime_dir = Some(runtime.clone());
    let user = runtime.join("user,mode=readline.sock");
    let options = LaunchOptions {
        monitors: vec![Monitor::qmp("user", MonitorEndpoint::Path(user.clone()))],
        ..LaunchOptions::default()
    };
    let mut vm = Vm::launch(assembled(&spec), options).expect("launch");
    let mut raw = hvarch_tests::RawQmp::connect(&user);
    assert_eq!(raw.ok("query-status", json!({}))["status"], "prelaunch");
    let chardevs = raw.ok("query-chardev", json!({}));
    let labels: Vec<&str> = chardevs
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["label"].as_str())
        .collect();
    assert!(
        labels.contains(&"user") && labels.contains(&"qmp"),
        "{labels:?}"
    );
    assert!(!labels.contains(&"evil"), "{labels:?}");
    let filename = chardevs
        .as_array()
        .expect("a list")
        .iter()
        .find(|c| c["label"] == "user")
        .and_then(|c| c["filename"].as_str())
        .expect("the user monitor's filename")
        .to_owned();
    assert!(filename.contains("user,mode=readline.sock"), "{filename}");
    drop(raw);
    vm.shutdown(GRACE).expect("shutdown");
    drop(vm);
    assert_clean(&dir, &runtime);
}
