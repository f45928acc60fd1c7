//! virtio-fs for real: the arm64 test guest (Debian's cloud kernel, the busybox initramfs;
//! TCG) mounts a share served by the Rust virtiofsd that `Vm::launch` starts, reads a file
//! the host wrote, and writes one the host then reads. The daemon is stopped and reaped with
//! the VM, its socket gone; a daemon that dies under a running VM is reported; a share that
//! cannot be served fails the launch with the daemon's own words and leaves nothing behind.
//!
//! Needs `HVARCH_GUEST_DIR` (the guest) and virtiofsd (`HVARCH_TOOLS_DIR` or the workspace's
//! `target/tools/bin`, both from `cargo xtask setup`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use hvarch::hvarch_arch::resources::Volume;
use hvarch::hvarch_arch::settings::SharedFs;
use hvarch::{assemble, LaunchOptions, Vm, VmError, VmSpec};
use hvarch_tests::guest::{self, Console, GuestOptions, VirtiofsReport, READY_MARKER};
use hvarch_tests::{assert_no_children_in, assert_reaped, process_exists, tools, TempDir};

/// Bounds, not expectations: TCG on a loaded 2-core machine.
const BOOT: Duration = Duration::from_secs(240);
const ANSWER: Duration = Duration::from_secs(120);
const TAG: &str = "hvarchShare";

/// The test guest, without UEFI (virtio-fs needs no ACPI), sharing `share` under [`TAG`]
/// over virtio-fs served by virtiofsd.
fn spec(dir: &TempDir, share: &Path) -> VmSpec {
    let files = guest::find(&guest::guest_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        guest::kernel_config(&files, "CONFIG_VIRTIO_FS").as_deref(),
        Some("y"),
        "the guest kernel has virtio-fs built in"
    );
    let initramfs = guest::initramfs(&files).unwrap_or_else(|e| panic!("{e}"));
    let mut options = GuestOptions::new("virtiofs", dir.path());
    options.uefi = false;
    options.root_ports = 0;
    let mut spec =
        guest::guest_spec(&files, &initramfs, &options).unwrap_or_else(|e| panic!("{e}"));
    let h = &mut spec.hypervisor;
    h.shared_fs = SharedFs::VirtioFs;
    h.virtio_fs_daemon = Some(tools::virtiofsd());
    // Kata's default extra arguments.
    h.virtio_fs_extra_args = vec!["--thread-pool-size=1".into(), "--announce-submounts".into()];
    h.virtio_fs_queue_size = Some(1024);
    spec.volumes.push(Volume {
        mount_tag: TAG.into(),
        host_path: share.to_path_buf(),
    });
    spec
}

#[test]
fn the_guest_reads_and_writes_the_host_directory() {
    let dir = TempDir::new();
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let word = format!("hello-from-host-{}", std::process::id());
    std::fs::write(share.join("from-host"), format!("{word}\n")).unwrap();

    let assembled = assemble(&spec(&dir, &share)).unwrap_or_else(|e| panic!("assemble: {e}"));
    let socket = assembled.virtiofs[0].socket.clone();
    let runtime_dir = assembled.paths.dir.clone();
    let mut vm =
        Vm::launch(assembled, LaunchOptions::default()).unwrap_or_else(|e| panic!("launch: {e}"));
    let daemon_pid = vm.virtiofs_daemons()[0].pid();
    assert!(process_exists(daemon_pid));
    let console = Console::connect(&vm.paths().console, None).unwrap();
    let context = |vm: &Vm, console: &Console| {
        format!(
            "--- console ---\n{}\n--- QEMU ---\n{}\n--- virtiofsd ---\n{}",
            console.transcript_text(),
            vm.stderr(),
            std::fs::read_to_string(&vm.assembled().virtiofs[0].stderr).unwrap_or_default()
        )
    };
    vm.resume().unwrap();
    let ready = console.wait_for("ready marker", BOOT, |l| l.starts_with(READY_MARKER));
    let release = ready
        .unwrap_or_else(|e| panic!("{e}\n{}", context(&vm, &console)))
        .text
        .split("kernel=")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    console.send(&format!("virtiofs {TAG}")).unwrap();
    let answer = console
        .wait_for("virtiofs answer", ANSWER, |l| {
            l.starts_with(guest::VIRTIOFS_PREFIX)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", context(&vm, &console)));
    let report = VirtiofsReport::parse(&answer.text).unwrap();
    assert_eq!(
        report,
        VirtiofsReport {
            tag: TAG.into(),
            mount: 0,
            read: word,
            write: 0,
        },
        "{}",
        context(&vm, &console)
    );
    // The host sees what the guest wrote.
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest")).unwrap(),
        format!("guest {release}\n")
    );
    vm.check().unwrap();

    // The daemon goes with the VM: stopped, reaped, its socket removed.
    vm.shutdown(Duration::from_secs(5)).unwrap();
    drop(vm);
    assert_reaped(daemon_pid);
    assert!(!socket.exists(), "{} left behind", socket.display());
    assert_left_nothing(&runtime_dir, &dir);
}

/// No runtime directory and no process of the test's directory left.
fn assert_left_nothing(runtime_dir: &Path, dir: &TempDir) {
    assert!(
        !runtime_dir.exists(),
        "{} left behind",
        runtime_dir.display()
    );
    assert_no_children_in(dir.path());
}

/// A daemon that would outlive its socket (virtiofsd behind a shell that stays) is stopped
/// and reaped with the VM, by `shutdown` and by drop.
#[test]
fn the_daemon_is_stopped_with_the_vm_even_if_it_would_stay() {
    for by_shutdown in [true, false] {
        let dir = TempDir::new();
        let share = dir.join("share");
        std::fs::create_dir_all(&share).unwrap();
        let wrapper = dir.join("stubborn-virtiofsd");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh
{} \"$@\" &
exec sleep 600
",
                tools::virtiofsd().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut spec = spec(&dir, &share);
        spec.hypervisor.virtio_fs_daemon = Some(wrapper);
        let mut vm = Vm::launch(assemble(&spec).unwrap(), LaunchOptions::default())
            .unwrap_or_else(|e| panic!("launch: {e}"));
        let daemon_pid = vm.virtiofs_daemons()[0].pid();
        vm.check().unwrap();
        if by_shutdown {
            vm.shutdown(Duration::from_millis(100)).unwrap();
            assert_reaped(daemon_pid);
        }
        drop(vm);
        assert_reaped(daemon_pid);
        assert_no_children_in(dir.path());
    }
}

/// A launch that fails leaves no daemon, no QEMU and nothing in the runtime directory.
fn assert_launch_fails(spec: &VmSpec, dir: &TempDir, expected: &[&str]) {
    let runtime_dir = spec.runtime_dir();
    let err = match Vm::launch(assemble(spec).expect("assemble"), LaunchOptions::default()) {
        Ok(_) => panic!("the launch succeeded"),
        Err(e) => e.to_string(),
    };
    for part in expected {
        assert!(err.contains(part), "{err:?} lacks {part:?}");
    }
    assert_left_nothing(&runtime_dir, dir);
}

#[test]
fn a_missing_shared_directory_fails_the_launch_cleanly() {
    let dir = TempDir::new();
    let share = dir.join("no-such-share");
    let spec = spec(&dir, &share);
    assert_launch_fails(
        &spec,
        &dir,
        &["virtio-fs daemon of share `hvarchShare`", "no-such-share"],
    );
}

#[test]
fn a_daemon_that_refuses_to_start_fails_the_launch_with_its_words() {
    let dir = TempDir::new();
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let mut spec = spec(&dir, &share);
    spec.hypervisor.virtio_fs_extra_args = vec!["--no-such-option".into()];
    assert_launch_fails(
        &spec,
        &dir,
        &[
            "QEMU failed to start",
            "the virtio-fs daemon of share `hvarchShare` said:",
            "--no-such-option",
        ],
    );
    spec.hypervisor.virtio_fs_extra_args.clear();
    spec.hypervisor.virtio_fs_daemon = Some(dir.join("no-such-virtiofsd"));
    assert_launch_fails(&spec, &dir, &["cannot execute", "no-such-virtiofsd"]);
}

#[test]
fn a_daemon_that_dies_is_reported() {
    let dir = TempDir::new();
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let mut spec = spec(&dir, &share);
    spec.id = "virtiofs-dies".into();
    let vm = Vm::launch(assemble(&spec).unwrap(), LaunchOptions::default())
        .unwrap_or_else(|e| panic!("launch: {e}"));
    let exits = vm.subscribe_virtiofs_exits();
    let daemon_pid = vm.virtiofs_daemons()[0].pid();
    vm.check().unwrap();
    hvarch_tests::sigkill(daemon_pid);
    let exit = exits
        .recv_timeout(ANSWER)
        .expect("the daemon's death is published");
    assert_eq!(exit.tag, TAG);
    assert_eq!(exit.pid, daemon_pid);
    assert!(!exit.expected);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&exit.status),
        Some(9)
    );
    match vm.check() {
        Err(VmError::VirtiofsDaemon(reported)) => assert_eq!(reported, exit),
        other => panic!("check: {other:?}"),
    }
    assert_reaped(daemon_pid);
    drop(vm);
    assert_no_children_in(dir.path());
}
