//! `hvarch run` of a real arm64 guest (Debian's cloud kernel and the busybox initramfs of
//! `hvarch_tests::guest`, direct kernel boot under TCG): the console is bridged both ways
//! (the guest's marker arrives on stdout; `poweroff` typed on stdin powers the guest off and
//! `hvarch` exits 0), and signals are sent the way a terminal or systemd sends them.
//!
//! A terminal signals its whole foreground process group, so these tests start `hvarch run`
//! in a process group of its own and signal the group (`kill(-pgid, …)`): QEMU, in a group of
//! its own, must not see the signal; hvarch must ask the guest to power off, which the tests
//! check over `hvarch run`'s user QMP socket (`POWERDOWN`, then `SHUTDOWN`). A guest booted
//! through UEFI has ACPI, and its `/init` powers off on the power button; one booted without
//! ignores it, so QEMU has to be quit. Either way no QEMU is left (checked by pid).
//!
//! The guest files come from `cargo xtask setup`; without them the tests fail with a message
//! naming it. Under `cargo xtask cross`, `hvarch` runs under qemu-aarch64 (through
//! `HVARCH_TEST_RUNNER`) and QEMU natively, so the guest boots as fast as on the host.

mod common;

use common::command;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use hvarch_tests::guest::{self, GuestOptions, BYE_MARKER, READY_MARKER};
use hvarch_tests::{RawQmp, TempDir};
use serde_json::Value;

/// Bounds on a guest booting or stopping under TCG on a loaded machine (not assertions).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

/// A spec file booting the test guest; `uefi` gives it ACPI (and so a power button it obeys).
/// Returns the spec file and the runtime dir.
fn guest_spec_file(dir: &TempDir, id: &str, uefi: bool, runtime: &str) -> (PathBuf, PathBuf) {
    write_spec(dir, &guest_spec(dir, id, uefi, runtime))
}

/// The test guest's spec (512 MiB, `enable_swap = true`), its vCPUs running.
fn guest_spec(dir: &TempDir, id: &str, uefi: bool, runtime: &str) -> hvarch::VmSpec {
    let files = guest::find(&guest::guest_dir()).unwrap_or_else(|e| panic!("{e}"));
    let initramfs = guest::initramfs(&files).unwrap_or_else(|e| panic!("{e}"));
    let mut options = GuestOptions::new(id, dir.path());
    options.uefi = uefi;
    let mut spec =
        guest::guest_spec(&files, &initramfs, &options).unwrap_or_else(|e| panic!("{e}"));
    spec.stopped = false;
    spec.runtime_dir = Some(dir.join(runtime));
    spec
}

/// Writes `spec` into `dir`; returns the file and the spec's runtime dir.
fn write_spec(dir: &TempDir, spec: &hvarch::VmSpec) -> (PathBuf, PathBuf) {
    let path = dir.join("guest.toml");
    std::fs::write(&path, toml::to_string(spec).expect("spec to TOML")).expect("write spec");
    let runtime = spec.runtime_dir.clone().expect("a runtime dir");
    (path, runtime)
}

/// What `hvarch run` says while QEMU locks the guest's memory.
const MEM_LOCK_NOTE: &str = "QEMU is locking all 512 MiB of guest memory";
/// Makes `hvarch run` say why QEMU is slow at once rather than after a second (QEMU is not
/// always slow enough for the note to be due).
const NOTE_AT_ONCE: (&str, &str) = ("HVARCH_SLOW_LAUNCH_NOTE_MS", "0");

/// Log lines (tracing's levels, as the CLI's subscriber prints them).
fn log_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            [" INFO ", " WARN ", " DEBUG ", " ERROR ", " TRACE "]
                .iter()
                .any(|level| l.contains(level))
        })
        .collect()
}

/// A running `hvarch run`, leading a process group of its own, as a shell's foreground job
/// would. Dropping it kills the group and reaps `hvarch`.
struct Run {
    child: Child,
    stdout: Receiver<String>,
    seen: Vec<String>,
}

impl Run {
    fn spawn(spec: &Path, extra: &[&str]) -> Run {
        Run::spawn_env(spec, extra, &[NOTE_AT_ONCE])
    }

    /// `hvarch run [extra…] SPEC` with `env` set.
    fn spawn_env(spec: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
        let mut child = command()
            .arg("run")
            .args(extra)
            .arg(spec)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
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
        Run {
            child,
            stdout: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line starting with `what`.
    fn wait_line(&mut self, what: &str) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(200)) {
                let found = line.starts_with(what);
                self.seen.push(line);
                if found {
                    return;
                }
            } else if let Ok(Some(status)) = self.child.try_wait() {
                let stderr = self.stderr();
                panic!(
                    "hvarch run exited ({status}) before {what}: {:?}\n{stderr}",
                    self.seen
                );
            }
        }
        panic!(
            "no {what} within {BOOT_TIMEOUT:?}; stdout so far: {:?}",
            self.seen
        );
    }

    fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        }
        err
    }

    /// Sends `signal` to the whole process group, as a terminal does.
    fn signal_group(&self, signal: libc::c_int) {
        let pgid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) of the process group our child leads.
        let rc = unsafe { libc::kill(-pgid, signal) };
        assert_eq!(rc, 0, "kill(-{pgid}): {}", std::io::Error::last_os_error());
    }

    /// Waits for the guest's ready marker, signals the group, waits for `hvarch run` to
    /// exit and checks that QEMU (from the pid file in `runtime`) is gone.
    fn stop_once_booted(&mut self, runtime: &Path, signal: libc::c_int) -> (ExitStatus, String) {
        self.wait_line(READY_MARKER);
        let qemu = Qemu::of(runtime);
        self.signal_group(signal);
        let exit = self.wait_exit();
        assert!(
            qemu.wait_dead(Duration::from_secs(30)),
            "QEMU {} left",
            qemu.0
        );
        exit
    }

    fn wait_exit(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "hvarch run did not exit within {EXIT_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: kill(2) of the process group our child leads.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = self.child.wait();
        }
    }
}

/// QEMU's pid, from its pid file in the runtime dir; killed on drop if still alive (a
/// failing test leaves no QEMU behind, even an orphan).
struct Qemu(u32);

impl Qemu {
    fn of(runtime: &Path) -> Qemu {
        let text = std::fs::read_to_string(runtime.join("pid")).expect("QEMU's pid file");
        Qemu(text.trim().parse().expect("a pid"))
    }

    /// Gone, or a zombie (dead, waiting for whoever reaps orphans).
    fn is_dead(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.0)) {
            Err(_) => true,
            Ok(stat) => stat[stat.rfind(')').map_or(0, |i| i + 2)..].starts_with('Z'),
        }
    }

    fn wait_dead(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.is_dead() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.is_dead()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if !self.is_dead() {
            if let Ok(pid) = libc::pid_t::try_from(self.0) {
                // SAFETY: kill(2) of the QEMU this test started (through hvarch run).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn event_names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_owned))
        .collect()
}

fn shutdown_reason(events: &[Value]) -> Option<String> {
    events
        .iter()
        .find(|e| e["event"] == "SHUTDOWN")
        .and_then(|e| e["data"]["reason"].as_str().map(str::to_owned))
}

/// What a signaled `hvarch run` left behind.
struct Signaled {
    /// Every event QEMU sent the user monitor.
    events: Vec<Value>,
    status: ExitStatus,
    stderr: String,
    runtime: PathBuf,
    /// Every stdout line (the guest's console).
    stdout: Vec<String>,
}

/// Boots, signals the group with `signal`, and returns what happened. QEMU is gone
/// afterwards.
fn signal_a_running_vm(
    dir: &TempDir,
    uefi: bool,
    runtime: &str,
    signal: libc::c_int,
    grace: &str,
) -> Signaled {
    let (spec, runtime) = guest_spec_file(dir, "run-signal", uefi, runtime);
    let mut run = Run::spawn(&spec, &["--grace", grace]);
    run.wait_line(READY_MARKER);
    let qemu = Qemu::of(&runtime);
    let mut qmp = RawQmp::connect(&runtime.join("qmp-user.sock"));
    run.signal_group(signal);
    let events = qmp.events_until_closed();
    let (status, stderr) = run.wait_exit();
    assert!(
        qemu.wait_dead(Duration::from_secs(30)),
        "QEMU {} is still running",
        qemu.0
    );
    // hvarch has exited: read its stdout to the end (the reader thread then hangs up).
    while let Ok(line) = run.stdout.recv_timeout(EXIT_TIMEOUT) {
        run.seen.push(line);
    }
    Signaled {
        events,
        status,
        stderr,
        runtime,
        stdout: std::mem::take(&mut run.seen),
    }
}

#[test]
fn the_guest_powers_itself_off_and_run_exits_zero() {
    let dir = TempDir::new();
    let (spec, runtime) = guest_spec_file(&dir, "run-poweroff", false, "run");
    let mut run = Run::spawn(&spec, &[]);
    run.wait_line(READY_MARKER);
    run.wait_line(guest::STATE_PREFIX);
    // Typed on stdin, through the console socket to the guest's /init.
    let mut stdin = run.child.stdin.take().expect("stdin");
    stdin.write_all(b"poweroff\n").expect("write to hvarch run");
    run.wait_line(BYE_MARKER);
    let (status, stderr) = run.wait_exit();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("hvarch: launching /usr/bin/qemu-system-aarch64"),
        "{stderr}"
    );
    assert!(stderr.contains("QMP ready in "), "{stderr}");
    assert!(stderr.contains("the guest powered off"), "{stderr}");
    // Memory not locked (`enable_swap = true`): no note, even when due at once; and
    // nothing logged without -v.
    assert!(!stderr.contains("locking"), "{stderr}");
    assert_eq!(log_lines(&stderr), Vec::<&str>::new(), "{stderr}");
    assert!(
        !runtime.exists(),
        "runtime dir {} left behind",
        runtime.display()
    );
}

/// What a guest that obeyed the power button leaves: `POWERDOWN` then a guest shutdown over
/// QMP, exit 0 with the signal named, no runtime dir.
fn assert_powered_off(signaled: &Signaled, signal: &str) {
    let Signaled {
        events,
        status,
        stderr,
        runtime,
        ..
    } = signaled;
    let names = event_names(events);
    assert!(names.iter().any(|n| n == "POWERDOWN"), "{names:?}");
    assert_eq!(
        shutdown_reason(events).as_deref(),
        Some("guest-shutdown"),
        "{events:?}"
    );
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains(&format!("{signal} received")), "{stderr}");
    assert!(stderr.contains("the guest powered off"), "{stderr}");
    assert!(
        !runtime.exists(),
        "runtime dir {} left behind",
        runtime.display()
    );
}

#[test]
fn ctrl_c_to_the_terminal_s_group_powers_the_guest_off_and_exits_zero() {
    let dir = TempDir::new();
    let signaled = signal_a_running_vm(&dir, true, "run", libc::SIGINT, "120");
    assert_powered_off(&signaled, "Ctrl-C (SIGINT)");
    // The guest's own word, copied from its console while it powered off.
    assert!(
        signaled
            .stdout
            .iter()
            .any(|l| l == "HVARCH-BYE power-button"),
        "{:?}",
        signaled.stdout
    );
}

#[test]
fn sigterm_to_the_group_powers_the_guest_off_with_any_grace_and_a_comma_in_the_runtime_dir() {
    let dir = TempDir::new();
    // The user QMP socket's path holds `,` and `=`: unescaped, `,id=evil` would be an option.
    let signaled = signal_a_running_vm(
        &dir,
        true,
        "run,id=evil,x=y",
        libc::SIGTERM,
        "18446744073709551615",
    );
    assert_powered_off(&signaled, "SIGTERM");
}

#[test]
fn sighup_to_the_group_of_a_guest_that_ignores_the_power_button_quits_qemu_and_says_so() {
    let dir = TempDir::new();
    // Without UEFI the guest has no ACPI power button: it ignores system_powerdown.
    let Signaled {
        events,
        status,
        stderr,
        runtime,
        ..
    } = signal_a_running_vm(&dir, false, "run", libc::SIGHUP, "1");
    let names = event_names(&events);
    assert!(names.iter().any(|n| n == "POWERDOWN"), "{names:?}");
    assert_eq!(
        shutdown_reason(&events).as_deref(),
        Some("host-qmp-quit"),
        "{events:?}"
    );
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    assert!(stderr.contains("SIGHUP received"), "{stderr}");
    assert!(
        stderr.contains("did not power off within the 1 s grace period: QEMU was told to quit"),
        "{stderr}"
    );
    assert!(
        !runtime.exists(),
        "runtime dir {} left behind",
        runtime.display()
    );
}

#[test]
fn a_runtime_dir_holding_the_users_disk_survives_ctrl_c() {
    let dir = TempDir::new();
    let (spec, runtime) = guest_spec_file(&dir, "run-user-dir", false, "mine");
    std::fs::create_dir(&runtime).expect("the user's directory");
    std::fs::write(runtime.join("disk.img"), b"precious").expect("disk.img");
    let mut run = Run::spawn(&spec, &["--grace", "1"]);
    let (status, stderr) = run.stop_once_booted(&runtime, libc::SIGINT);
    // The guest ignored the button (no UEFI): quit, and the exit status says so.
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    let mut left: Vec<String> = std::fs::read_dir(&runtime)
        .expect("the user's directory survives")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["disk.img"], "{stderr}");
    assert_eq!(
        std::fs::read(runtime.join("disk.img")).expect("disk.img"),
        b"precious"
    );
}

#[test]
fn a_killed_hvarch_run_leaves_no_qemu() {
    let dir = TempDir::new();
    let (spec, runtime) = guest_spec_file(&dir, "run-sigkill", false, "run");
    let mut run = Run::spawn(&spec, &[]);
    run.wait_line(READY_MARKER);
    let qemu = Qemu::of(&runtime);
    let pid = libc::pid_t::try_from(run.child.id()).expect("pid fits");
    // SAFETY: kill(2) of our own child (hvarch run only, not its group).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let (status, _) = run.wait_exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(
        qemu.wait_dead(Duration::from_secs(30)),
        "QEMU {} outlived its parent",
        qemu.0
    );
}

#[test]
fn locking_guest_memory_is_explained_while_it_happens_and_v_shows_progress() {
    let dir = TempDir::new();
    let mut spec = guest_spec(&dir, "run-mem-lock", false, "run");
    // Kata's default: QEMU locks all guest memory (-overcommit mem-lock=on).
    spec.hypervisor.enable_swap = false;
    let (spec, runtime) = write_spec(&dir, &spec);
    let mut run = Run::spawn(&spec, &["-v", "--grace", "1"]);
    let (_, stderr) = run.stop_once_booted(&runtime, libc::SIGTERM);
    let note = stderr
        .find(MEM_LOCK_NOTE)
        .unwrap_or_else(|| panic!("no note:\n{stderr}"));
    let ready = stderr.find("QMP ready in").expect("QMP ready");
    assert!(note < ready, "the note comes while QEMU starts:\n{stderr}");
    assert!(
        stderr.contains("mem-lock=on") && stderr.contains("`enable_swap = true`"),
        "{stderr}"
    );
    // -v: hvarch's progress (info), not its details (debug).
    let logged = log_lines(&stderr);
    assert!(
        logged
            .iter()
            .any(|l| l.contains(" INFO ") && l.contains("QEMU ready")),
        "{stderr}"
    );
    assert!(!logged.iter().any(|l| l.contains(" DEBUG ")), "{stderr}");
}

#[test]
fn a_closed_stdout_powers_the_guest_off_and_exits_quietly() {
    let dir = TempDir::new();
    let (spec, runtime) = guest_spec_file(&dir, "run-closed-stdout", false, "run");
    let out = command()
        .args(["run", "--grace", "1"])
        .arg(&spec)
        .stdin(Stdio::null())
        .stdout(common::closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .expect("run hvarch run");
    let stderr = common::text(&out.stderr);
    assert_eq!(out.status.code(), Some(common::OUTPUT_CLOSED), "{stderr}");
    assert!(
        stderr.contains("standard output closed: asking the guest to power off"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !runtime.exists(),
        "runtime dir {} left behind",
        runtime.display()
    );
}
