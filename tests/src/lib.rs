//! Test support for hvarch's integration tests: run a real QEMU and always clean up.
//!
//! [`QemuProcess`] starts a QEMU binary under TCG with a QMP socket in a private temporary
//! directory. Dropping it kills the child by pid, reaps it and removes the directory, so a
//! failing (panicking) test leaves no process and no socket behind. [`RawQmp`] is a minimal,
//! independent QMP exchange used to check what QEMU reports, without trusting our own client.
//!
//! In CI a missing QEMU is a failure, not a skip: [`QemuProcess::spawn`] panics with a message
//! naming the binary and `cargo xtask setup`.

pub mod demo;
pub mod drivers;
pub mod guest;
pub mod query;
pub mod spec;
pub mod tools;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The QEMU system emulator for aarch64 guests.
pub const QEMU_AARCH64: &str = "qemu-system-aarch64";
/// The QEMU system emulator for x86_64 guests.
pub const QEMU_X86_64: &str = "qemu-system-x86_64";
/// The QEMU system emulator for ppc64le guests (`pseries`).
pub const QEMU_PPC64: &str = "qemu-system-ppc64";
/// The QEMU system emulator for s390x guests (`s390-ccw-virtio`).
pub const QEMU_S390X: &str = "qemu-system-s390x";

/// Base arguments for a paused, headless arm64 `virt` machine under TCG.
pub const AARCH64_VIRT_TCG: &[&str] = &[
    "-machine",
    "virt,accel=tcg,gic-version=3",
    "-cpu",
    "max",
    "-m",
    "256M",
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-S",
];

/// Base arguments for a paused, headless x86_64 `q35` machine under TCG.
pub const X86_64_Q35_TCG: &[&str] = &[
    "-machine",
    "q35,accel=tcg",
    "-cpu",
    "max",
    "-m",
    "256M",
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-S",
];

/// A directory of the workspace's `target/` (`target/<sub>`), or the one the environment
/// variable `env` names instead (a git worktree may point it at the main checkout's).
pub fn target_dir_or_env(env: &str, sub: &str) -> PathBuf {
    match std::env::var_os(env) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."))
            .join("target")
            .join(sub),
    }
}

/// A `-device` of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDevice {
    /// The driver, e.g. `virtio-blk-pci`.
    pub driver: String,
    /// Its `id=`.
    pub id: String,
    /// `devno=` of a CCW device.
    pub devno: Option<String>,
}

/// Every `-device` of a QEMU command line that has an `id=`, in order (values here hold no
/// escaped commas).
pub fn argv_devices(argv: &[String]) -> Vec<ArgDevice> {
    argv.windows(2)
        .filter(|w| w[0] == "-device")
        .filter_map(|w| {
            let mut props = w[1].split(',');
            let driver = props.next()?.to_owned();
            let props: Vec<&str> = props.collect();
            let value = |key: &str| {
                props
                    .iter()
                    .find_map(|p| p.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            };
            Some(ArgDevice {
                driver,
                id: value("id")?.to_owned(),
                devno: value("devno").map(str::to_owned),
            })
        })
        .collect()
}

/// Whether a `-device` driver sits on a PCI bus.
pub fn is_pci_driver(driver: &str) -> bool {
    driver.ends_with("-pci") || matches!(driver, "pci-bridge" | "pcie-root-port")
}

/// A private temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/hvarch-test-<pid>-<n>` with mode 0700.
    pub fn new() -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("hvarch-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test temp dir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .expect("chmod test temp dir");
        TempDir { path }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running QEMU child, killed and reaped on drop.
#[derive(Debug)]
pub struct QemuProcess {
    child: Option<Child>,
    qmp_path: PathBuf,
    stderr_path: PathBuf,
    // Dropped last: the socket and logs live here.
    dir: TempDir,
}

impl QemuProcess {
    /// Starts `binary` with `args` plus a QMP server socket (`-qmp unix:<dir>/qmp.sock,server=on,wait=off`),
    /// and waits (up to 10 s) until the socket accepts connections.
    ///
    /// Panics if the binary is missing (CI must have QEMU: run `cargo xtask setup`) or exits early;
    /// the panic message carries QEMU's stderr.
    pub fn spawn(binary: &str, args: &[String]) -> QemuProcess {
        let dir = TempDir::new();
        Self::spawn_in(dir, binary, args)
    }

    /// Like [`QemuProcess::spawn`], but inside an existing directory (which the process then owns).
    pub fn spawn_in(dir: TempDir, binary: &str, args: &[String]) -> QemuProcess {
        let qmp_path = dir.join("qmp.sock");
        let stderr_path = dir.join("qemu.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot start {binary}: {e}. QEMU is required for these tests; run `cargo xtask setup`."
            ),
        };
        let mut process = QemuProcess {
            child: Some(child),
            qmp_path,
            stderr_path,
            dir,
        };
        process.wait_for_socket(Duration::from_secs(10));
        process
    }

    fn wait_for_socket(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if UnixStream::connect(&self.qmp_path).is_ok() {
                return;
            }
            if let Some(status) = self.try_wait() {
                panic!(
                    "QEMU exited with {status} before its QMP socket was ready:\n{}",
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "QEMU's QMP socket did not appear within {timeout:?}:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `binary args` expecting it to fail at start; returns its stderr.
    pub fn expect_start_failure(binary: &str, args: &[String]) -> String {
        let out = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}; run `cargo xtask setup`"));
        assert!(!out.status.success(), "{binary} unexpectedly succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The QMP socket's path.
    pub fn qmp_path(&self) -> &Path {
        &self.qmp_path
    }

    /// The test directory (for disk images, extra sockets).
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// What QEMU wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The exit status, if the child has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Connects a fresh [`RawQmp`] and negotiates capabilities.
    pub fn raw_qmp(&self) -> RawQmp {
        RawQmp::connect(&self.qmp_path)
    }

    /// Waits up to `timeout` for the child to exit by itself; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal QMP exchange over a Unix socket: greeting, `qmp_capabilities`, commands with ids.
///
/// Deliberately independent of `hvarch-qmp` so tests can check QEMU's view with a second opinion.
/// Events are collected while waiting for replies and can be read with [`RawQmp::events`].
#[derive(Debug)]
pub struct RawQmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    greeting: Value,
    events: Vec<Value>,
    next_id: u64,
}

impl RawQmp {
    /// Connects, reads the greeting and negotiates. Panics with a clear message on failure.
    pub fn connect(path: &Path) -> RawQmp {
        let stream = UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("connect to QMP socket {}: {e}", path.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set read timeout");
        let writer = stream.try_clone().expect("clone QMP stream");
        let mut qmp = RawQmp {
            reader: BufReader::new(stream),
            writer,
            greeting: Value::Null,
            events: Vec::new(),
            next_id: 0,
        };
        loop {
            let msg = qmp.read_message();
            if msg.get("QMP").is_some() {
                qmp.greeting = msg;
                break;
            }
            qmp.events.push(msg);
        }
        qmp.execute("qmp_capabilities", json!({}))
            .expect("qmp_capabilities");
        qmp
    }

    /// The greeting QEMU sent.
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    fn read_message(&mut self) -> Value {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .expect("read from QMP socket");
        assert!(n > 0, "QMP socket closed by QEMU");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad QMP line {line:?}: {e}"))
    }

    /// Executes `command` with `arguments`; `Ok(return)` or `Err(error object)`.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = format!("raw-{}", self.next_id);
        let mut msg = json!({ "execute": command, "id": id });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("serialize QMP command");
        bytes.push(b'\n');
        self.writer.write_all(&bytes).expect("write QMP command");
        loop {
            let reply = self.read_message();
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            if reply.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            return Err(reply.get("error").cloned().unwrap_or(reply));
        }
    }

    /// Executes `command` and panics with QEMU's error if it fails.
    pub fn ok(&mut self, command: &str, arguments: Value) -> Value {
        self.execute(command, arguments.clone())
            .unwrap_or_else(|e| panic!("QMP {command} {arguments} failed: {e}"))
    }

    /// Events received so far.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Reads until QEMU closes the connection (it exits) and returns every event received,
    /// earlier ones included. Panics if nothing arrives for the read timeout (30 s).
    pub fn events_until_closed(&mut self) -> Vec<Value> {
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return std::mem::take(&mut self.events),
                Ok(_) => {
                    let msg: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("bad QMP line {line:?}: {e}"));
                    if msg.get("event").is_some() {
                        self.events.push(msg);
                    }
                }
                // QEMU may reset rather than close as it exits.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return std::mem::take(&mut self.events)
                }
                Err(e) => panic!(
                    "QMP socket still open with nothing to read ({e}); events so far: {:?}",
                    self.events
                ),
            }
        }
    }

    /// An HMP command through `human-monitor-command`: its output (empty when an HMP command
    /// that prints nothing succeeded).
    pub fn hmp(&mut self, command: &str) -> String {
        self.ok("human-monitor-command", json!({ "command-line": command }))
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// `qom-get path property`.
    pub fn qom_get(&mut self, path: &str, property: &str) -> Value {
        self.ok("qom-get", json!({ "path": path, "property": property }))
    }

    /// Names of the children of `/machine/peripheral` (user-created devices with ids), sorted.
    pub fn peripheral_ids(&mut self) -> Vec<String> {
        let list = self.ok("qom-list", json!({ "path": "/machine/peripheral" }));
        query::child_names(&list)
    }

    /// The `node-name`s of `query-named-block-nodes`.
    pub fn block_node_names(&mut self) -> Vec<String> {
        query::node_names(&self.ok("query-named-block-nodes", json!({})))
    }

    /// All `qdev_id`s found by walking `query-pci`, bridges included, sorted.
    pub fn pci_device_ids(&mut self) -> Vec<String> {
        query::pci_ids(&self.ok("query-pci", json!({})))
    }
}

/// A paused arm64 `virt` VM under TCG with one PCIe root port `rp0` (a hotplug target).
pub fn paused_aarch64_with_root_port() -> QemuProcess {
    let mut a = args(AARCH64_VIRT_TCG);
    a.extend(args(&[
        "-device",
        "pcie-root-port,id=rp0,bus=pcie.0,chassis=1",
    ]));
    QemuProcess::spawn(QEMU_AARCH64, &a)
}

/// Converts string slices to owned argument strings.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The pids of this process's live (or not yet reaped) children, from every thread's
/// `/proc/self/task/<tid>/children` (a child belongs to the thread that spawned it).
pub fn child_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return pids;
    };
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The command line of process `pid` (empty if it is gone).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// This process's children whose command line mentions `needle` (e.g. a test's temporary
/// directory: tests run in parallel, so "no children at all" is not something one test can
/// assert).
pub fn children_mentioning(needle: &str) -> Vec<u32> {
    child_pids()
        .into_iter()
        .filter(|&pid| cmdline(pid).iter().any(|arg| arg.contains(needle)))
        .collect()
}

/// Panics if a child of this process still mentions `dir` on its command line.
pub fn assert_no_children_in(dir: &Path) {
    let needle = dir.to_string_lossy();
    let left = children_mentioning(&needle);
    assert!(
        left.is_empty(),
        "children still running for {needle}: {:?}",
        left.iter().map(|&p| (p, cmdline(p))).collect::<Vec<_>>()
    );
}

/// Whether `/proc/<pid>` exists (a zombie still has one: only reaping removes it).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Panics unless `pid` is gone for good: not a child of this process any more, and reaped
/// (no `/proc/<pid>`, so no zombie).
pub fn assert_reaped(pid: u32) {
    assert!(
        !child_pids().contains(&pid),
        "process {pid} is still a child of this process"
    );
    assert!(
        !process_exists(pid),
        "process {pid} still exists (zombie or running): {:?}",
        std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default()
    );
}

/// Sends SIGKILL to `pid` (a QEMU a test wants to die abruptly).
pub fn sigkill(pid: u32) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is a child we started.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}

/// How many descriptors this process has open (`/proc/self/fd`, the directory's own
/// descriptor not counted).
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count().saturating_sub(1))
        .unwrap_or(0)
}

/// Runs `f` on a new thread and returns its result, panicking if it takes longer than
/// `limit` (a hang becomes a test failure instead of a stuck test run).
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => {
            let _ = handle.join();
            value
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("{what}: the thread ended without a result"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish within {limit:?}")
        }
    }
}
