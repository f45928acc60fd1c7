//! `hvarch run` of a real arm64 guest (Debian's cloud kernel and the busybox initramfs of
//! `hvarch_tests::guest`, direct kernel boot under TCG): the console is bridged both ways
//! (the guest's marker arrives on stdout; `poweroff` typed on stdin powers the guest off and
//! `hvarch` exits 0), and SIGINT shuts the VM down and exits 0. Progress lines go to stderr.
//!
//! The guest files come from `cargo xtask setup`; without them the tests fail with a message
//! naming it. Under `cargo xtask cross`, `hvarch` runs under qemu-aarch64 (through
//! `HVARCH_TEST_RUNNER`) and QEMU natively, so the guest boots as fast as on the host.

mod common;

use common::command;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use hvarch_tests::guest::{self, GuestOptions, BYE_MARKER, READY_MARKER};
use hvarch_tests::TempDir;

/// A spec file booting the test guest without UEFI (faster; no memory hotplug needed here).
fn guest_spec_file(dir: &TempDir, id: &str) -> (PathBuf, PathBuf) {
    let files = guest::find(&guest::guest_dir()).unwrap_or_else(|e| panic!("{e}"));
    let initramfs = guest::initramfs(&files).unwrap_or_else(|e| panic!("{e}"));
    let mut options = GuestOptions::new(id, dir.path());
    options.uefi = false;
    let mut spec =
        guest::guest_spec(&files, &initramfs, &options).unwrap_or_else(|e| panic!("{e}"));
    spec.stopped = false;
    let runtime = spec.runtime_dir();
    let path = dir.join("guest.toml");
    std::fs::write(&path, toml::to_string(&spec).expect("spec to TOML")).expect("write spec");
    (path, runtime)
}

/// `hvarch run SPEC` with piped stdio; stdout lines arrive on the receiver.
fn spawn_run(spec: &PathBuf, extra: &[&str]) -> (Child, Receiver<String>) {
    let mut child = command()
        .arg("run")
        .args(extra)
        .arg(spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hvarch run");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim_end_matches('\r').to_owned()).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_line(rx: &Receiver<String>, what: &str, child: &mut Child) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let found = line.starts_with(what);
            seen.push(line);
            if found {
                return seen;
            }
        } else if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            let _ =
                std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
            panic!("hvarch run exited ({status}) before {what}: {seen:?}\n{err}");
        }
    }
    let _ = child.kill();
    panic!("no {what} within 60 s; stdout so far: {seen:?}");
}

fn wait_exit(child: &mut Child, timeout: Duration) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            let _ =
                std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
            return (status, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("hvarch run did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_guest_powers_itself_off_and_run_exits_zero() {
    let dir = TempDir::new();
    let (spec, runtime) = guest_spec_file(&dir, "run-poweroff");
    let (mut child, rx) = spawn_run(&spec, &[]);
    wait_line(&rx, READY_MARKER, &mut child);
    wait_line(&rx, guest::STATE_PREFIX, &mut child);
    // Typed on stdin, through the console socket to the guest's /init.
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"poweroff\n").expect("write to hvarch run");
    wait_line(&rx, BYE_MARKER, &mut child);
    let (status, stderr) = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("hvarch: launching /usr/bin/qemu-system-aarch64"),
        "{stderr}"
    );
    assert!(stderr.contains("QMP ready in "), "{stderr}");
    assert!(stderr.contains("the guest powered off"), "{stderr}");
    assert!(
        !runtime.exists(),
        "runtime dir {} left behind",
        runtime.display()
    );
}

#[test]
fn sigint_shuts_the_vm_down() {
    let dir = TempDir::new();
    let (spec, runtime) = guest_spec_file(&dir, "run-sigint");
    let (mut child, rx) = spawn_run(&spec, &["--grace", "1"]);
    wait_line(&rx, READY_MARKER, &mut child);
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let (status, stderr) = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("Ctrl-C received: shutting the VM down"),
        "{stderr}"
    );
    assert!(stderr.contains("QEMU exited"), "{stderr}");
    assert!(
        !runtime.exists(),
        "runtime dir {} left behind",
        runtime.display()
    );
}
