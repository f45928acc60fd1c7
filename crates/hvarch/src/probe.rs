//! What a QEMU binary can do, and whether it can run a VM: refuse a spec before launching
//! a QEMU that would only fail on it.
//!
//! The binary is asked directly, never guessed from its version: it is started with
//! `-machine none -S -nodefaults -no-user-config -display none -qmp stdio` on one end of a
//! socket pair (no files, no polling) and asked `query-version`, `query-machines`,
//! `qom-list-types` (the concrete types: every device, object and backend the binary was
//! built with) and `qom-list-types implements=accel`; then it is told to `quit`.
//!
//! [`capabilities`] caches the answer per binary for the life of the process. The cache is
//! keyed by the file's identity (device, inode, size and modification time), not only by its
//! path: a QEMU upgraded while a long-lived process runs is probed again.
//!
//! The parts that do no I/O are public too: [`Capabilities::from_replies`] reads QMP replies,
//! [`Requirements::from_argv`] reads a command line, and [`Capabilities::missing`] compares
//! the two.
//!
//! ```no_run
//! use hvarch::{assemble, probe, VmSpec};
//!
//! let vm = assemble(&VmSpec::kata_default())?;
//! // The binary's machine types, devices, objects and accelerators against the VM's.
//! match probe::check(&vm) {
//!     Ok(caps) => println!("QEMU {} can run it", caps.version),
//!     Err(probe::ProbeError::Unsupported { missing, .. }) => {
//!         for what in missing {
//!             eprintln!("missing: {what}");
//!         }
//!     }
//!     Err(e) => eprintln!("{e}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hvarch_devices::part::Syntax;
use hvarch_qmp::{Config, QemuVersion, Qmp};
use serde_json::{json, Value};

use crate::assemble::Assembled;

/// How long the probed QEMU gets to greet and to answer each question.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the probed QEMU gets to exit after `quit` before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a binary could not be probed, or cannot run a VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The binary does not exist.
    #[error("{}: no such QEMU binary", binary.display())]
    NotFound {
        /// The binary.
        binary: PathBuf,
    },
    /// The binary exists but could not be started.
    #[error("cannot run {}: {source}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// What `exec` said.
        #[source]
        source: std::io::Error,
    },
    /// The socket pair for QEMU's monitor could not be made.
    #[error("cannot create a socket pair for QEMU's monitor: {0}")]
    Socket(#[source] std::io::Error),
    /// QEMU did not greet or did not answer a question.
    #[error("cannot probe {}: {command}: {source}{}", binary.display(), crate::vm::stderr_suffix(stderr))]
    Qmp {
        /// The binary.
        binary: PathBuf,
        /// The QMP command (`greeting` for the greeting).
        command: &'static str,
        /// The QMP client's error.
        #[source]
        source: Box<hvarch_qmp::Error>,
        /// What QEMU wrote on stderr.
        stderr: String,
    },
    /// A reply did not have the shape QEMU documents.
    #[error("cannot probe {}: unexpected `{command}` reply: {reason}", binary.display())]
    Reply {
        /// The binary.
        binary: PathBuf,
        /// The QMP command.
        command: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The VM's command line could not be rendered.
    #[error("cannot read the VM's requirements: {0}")]
    Assembly(#[source] Box<crate::Error>),
    /// The binary lacks something the VM needs.
    #[error(
        "{} (QEMU {version}) cannot run this VM: it has no {}",
        binary.display(),
        missing.iter().map(ToString::to_string).collect::<Vec<_>>().join(", no ")
    )]
    Unsupported {
        /// The binary.
        binary: PathBuf,
        /// Its version.
        version: QemuVersion,
        /// Everything it lacks, in the VM's order (machine, devices, objects, accelerator).
        missing: Vec<Need>,
    },
}

/// A machine type of the binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineType {
    /// Its name, e.g. `virt-10.0`.
    pub name: String,
    /// Its alias, e.g. `virt`.
    pub alias: Option<String>,
    /// Whether it is the binary's default.
    pub is_default: bool,
}

/// What a QEMU binary can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The binary.
    pub binary: PathBuf,
    /// Its version.
    pub version: QemuVersion,
    /// The distribution's package string (`query-version`'s `package`, trimmed; may be
    /// empty), e.g. `Debian 1:10.0.2+ds-1`.
    pub package: String,
    /// Machine types, sorted by name.
    pub machines: Vec<MachineType>,
    /// Accelerators compiled in (`kvm`, `tcg`, …), sorted. Compiled in is not usable: KVM
    /// also needs `/dev/kvm` (see [`kvm`]).
    pub accelerators: Vec<String>,
    /// Every concrete QOM type (devices, objects, backends).
    pub types: BTreeSet<String>,
}

impl Capabilities {
    /// Reads the replies to `query-version`, `query-machines`, `qom-list-types
    /// abstract=false` and `qom-list-types implements=accel` (the `return` members).
    pub fn from_replies(
        binary: &Path,
        version: &Value,
        machines: &Value,
        types: &Value,
        accelerators: &Value,
    ) -> Result<Capabilities, ProbeError> {
        let bad = |command: &'static str, reason: String| ProbeError::Reply {
            binary: binary.to_path_buf(),
            command,
            reason,
        };
        let qemu_version = QemuVersion::from_json(&version["qemu"])
            .map_err(|e| bad("query-version", e.to_string()))?;
        let package = version
            .get("package")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_owned();
        let machine_list = machines
            .as_array()
            .ok_or_else(|| bad("query-machines", format!("not an array: {machines}")))?;
        let mut machines = machine_list
            .iter()
            .map(|m| {
                let name = m.get("name").and_then(Value::as_str).ok_or_else(|| {
                    bad("query-machines", format!("a machine without a name: {m}"))
                })?;
                Ok(MachineType {
                    name: name.to_owned(),
                    alias: m.get("alias").and_then(Value::as_str).map(str::to_owned),
                    is_default: m.get("is-default").and_then(Value::as_bool) == Some(true),
                })
            })
            .collect::<Result<Vec<_>, ProbeError>>()?;
        machines.sort_by(|a, b| a.name.cmp(&b.name));
        let type_names = |command: &'static str, list: &Value| -> Result<Vec<String>, ProbeError> {
            list.as_array()
                .ok_or_else(|| bad(command, format!("not an array: {list}")))?
                .iter()
                .map(|t| {
                    t.get("name")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| bad(command, format!("a type without a name: {t}")))
                })
                .collect()
        };
        let mut accelerators: Vec<String> = type_names("qom-list-types", accelerators)?
            .into_iter()
            .map(|n| n.strip_suffix("-accel").map(str::to_owned).unwrap_or(n))
            .collect();
        accelerators.sort();
        accelerators.dedup();
        Ok(Capabilities {
            binary: binary.to_path_buf(),
            version: qemu_version,
            package,
            machines,
            accelerators,
            types: type_names("qom-list-types", types)?.into_iter().collect(),
        })
    }

    /// Whether `name` is a machine type or alias of the binary.
    pub fn has_machine(&self, name: &str) -> bool {
        self.machines
            .iter()
            .any(|m| m.name == name || m.alias.as_deref() == Some(name))
    }

    /// Whether the binary has the concrete QOM type `name` (a `-device` driver, an
    /// `-object` type, a backend).
    pub fn has_type(&self, name: &str) -> bool {
        self.types.contains(name)
    }

    /// Whether the accelerator `name` (`kvm`, `tcg`) is compiled in.
    pub fn has_accelerator(&self, name: &str) -> bool {
        self.accelerators.iter().any(|a| a == name)
    }

    /// The binary's default machine type, if it has one.
    pub fn default_machine(&self) -> Option<&MachineType> {
        self.machines.iter().find(|m| m.is_default)
    }

    /// Whether the binary has `need`.
    pub fn has(&self, need: &Need) -> bool {
        match need {
            Need::Machine(m) => self.has_machine(m),
            Need::Device(t) | Need::Object(t) => self.has_type(t),
            Need::Accelerator(a) => self.has_accelerator(a),
        }
    }

    /// What of `req` the binary lacks, in `req`'s order.
    pub fn missing(&self, req: &Requirements) -> Vec<Need> {
        req.needs().filter(|n| !self.has(n)).collect()
    }

    /// `Ok` when the binary has everything `req` names, else
    /// [`ProbeError::Unsupported`] naming all it lacks.
    pub fn check(&self, req: &Requirements) -> Result<(), ProbeError> {
        let missing = self.missing(req);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ProbeError::Unsupported {
                binary: self.binary.clone(),
                version: self.version,
                missing,
            })
        }
    }
}

/// One thing a VM needs from its binary (and, in [`ProbeError::Unsupported`], one thing
/// the binary lacks).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Need {
    /// A machine type (or alias).
    Machine(String),
    /// A `-device` driver.
    Device(String),
    /// An `-object` type.
    Object(String),
    /// An accelerator.
    Accelerator(String),
}

impl Need {
    /// The name of what is needed (`virt`, `virtio-blk-pci`, `kvm`).
    pub fn name(&self) -> &str {
        match self {
            Need::Machine(n) | Need::Device(n) | Need::Object(n) | Need::Accelerator(n) => n,
        }
    }

    /// Its kind, as a word: `machine`, `device`, `object` or `accelerator`.
    pub fn kind(&self) -> &'static str {
        match self {
            Need::Machine(_) => "machine",
            Need::Device(_) => "device",
            Need::Object(_) => "object",
            Need::Accelerator(_) => "accelerator",
        }
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Machine(m) => write!(f, "machine type `{m}`"),
            Need::Device(d) => write!(f, "device `{d}`"),
            Need::Object(o) => write!(f, "object type `{o}`"),
            Need::Accelerator(a) => write!(f, "accelerator `{a}`"),
        }
    }
}

/// What a VM needs from its binary, read from its command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// The machine type.
    pub machine: Option<String>,
    /// The accelerator (`accel=` of `-machine`).
    pub accelerator: Option<String>,
    /// `-device` drivers, in order, without repeats.
    pub devices: Vec<String>,
    /// `-object` types, in order, without repeats.
    pub objects: Vec<String>,
}

impl Requirements {
    /// The requirements of an assembled VM.
    pub fn of(assembled: &Assembled) -> Result<Requirements, ProbeError> {
        let argv = assembled
            .argv(Syntax::Options)
            .map_err(|e| ProbeError::Assembly(Box::new(e)))?;
        Ok(Requirements::from_argv(&argv))
    }

    /// Reads the requirements from an argv in option syntax (`-device driver,…`; the
    /// binary first or not).
    pub fn from_argv(argv: &[String]) -> Requirements {
        let mut req = Requirements::default();
        let first = |value: &str| value.split(',').next().unwrap_or("").to_owned();
        for pair in argv.windows(2) {
            let value = pair[1].as_str();
            match pair[0].as_str() {
                "-machine" | "-M" => {
                    req.machine = Some(first(value)).filter(|m| !m.is_empty());
                    req.accelerator = value
                        .split(',')
                        .find_map(|p| p.strip_prefix("accel="))
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned);
                }
                "-device" => push_unique(&mut req.devices, first(value)),
                "-object" => push_unique(&mut req.objects, first(value)),
                _ => {}
            }
        }
        req
    }

    /// The same requirements without the accelerator: what a command line printed for
    /// another host needs from this binary.
    pub fn without_accelerator(mut self) -> Requirements {
        self.accelerator = None;
        self
    }

    /// Everything needed, in order: the machine, devices, objects, then the accelerator.
    pub fn needs(&self) -> impl Iterator<Item = Need> + '_ {
        let machine = self.machine.iter().cloned().map(Need::Machine);
        let devices = self.devices.iter().cloned().map(Need::Device);
        let objects = self.objects.iter().cloned().map(Need::Object);
        let accel = self.accelerator.iter().cloned().map(Need::Accelerator);
        machine.chain(devices).chain(objects).chain(accel)
    }
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !item.is_empty() && !list.contains(&item) {
        list.push(item);
    }
}

/// Checks that the binary of an assembled VM has its machine, devices, objects and
/// accelerator; returns the binary's capabilities (cached, see [`capabilities`]).
///
/// Errors: [`ProbeError::NotFound`] when the binary does not exist,
/// [`ProbeError::Unsupported`] naming everything it lacks, or why it could not be probed.
pub fn check(assembled: &Assembled) -> Result<Arc<Capabilities>, ProbeError> {
    check_requirements(assembled, Requirements::of(assembled)?)
}

/// Like [`check`], without the accelerator: for a command line printed (not run) here,
/// which may name KVM on a host without it.
pub fn check_without_accelerator(assembled: &Assembled) -> Result<Arc<Capabilities>, ProbeError> {
    check_requirements(
        assembled,
        Requirements::of(assembled)?.without_accelerator(),
    )
}

fn check_requirements(
    assembled: &Assembled,
    req: Requirements,
) -> Result<Arc<Capabilities>, ProbeError> {
    let caps = capabilities(&assembled.qemu_path)?;
    caps.check(&req)?;
    Ok(caps)
}

/// The identity of a binary file: a replaced file (a package upgrade) is a new key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FileKey {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl FileKey {
    fn of(binary: &Path) -> Result<FileKey, ProbeError> {
        let meta = std::fs::metadata(binary).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ProbeError::NotFound {
                binary: binary.to_path_buf(),
            },
            _ => ProbeError::Spawn {
                binary: binary.to_path_buf(),
                source: e,
            },
        })?;
        Ok(FileKey {
            path: binary.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        })
    }
}

type Cache = Mutex<HashMap<FileKey, Arc<Capabilities>>>;

/// The capabilities of `binary`, probed once per process and file (see the module docs).
pub fn capabilities(binary: &Path) -> Result<Arc<Capabilities>, ProbeError> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = FileKey::of(binary)?;
    let cache = CACHE.get_or_init(Cache::default);
    let cached = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&key)
        .cloned();
    if let Some(caps) = cached {
        return Ok(caps);
    }
    let caps = Arc::new(query(binary)?);
    let mut cache = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // A replaced binary's old entry is dead: keep one entry per path.
    cache.retain(|k, _| k.path != key.path);
    cache.insert(key, Arc::clone(&caps));
    Ok(caps)
}

/// Probes `binary` now, without the cache: starts it with nothing but a QMP monitor on a
/// socket pair and asks it.
pub fn query(binary: &Path) -> Result<Capabilities, ProbeError> {
    // Asked of the file system first: how a failed exec is reported varies (a process
    // emulator such as qemu-user reports a missing binary as the child's exit).
    FileKey::of(binary)?;
    let (ours, theirs) = UnixStream::pair().map_err(ProbeError::Socket)?;
    let theirs_out = theirs.try_clone().map_err(ProbeError::Socket)?;
    let child = Command::new(binary)
        .args([
            "-machine",
            "none",
            "-S",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-qmp",
            "stdio",
        ])
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(theirs_out)))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ProbeError::NotFound {
                binary: binary.to_path_buf(),
            },
            _ => ProbeError::Spawn {
                binary: binary.to_path_buf(),
                source,
            },
        })?;
    let mut child = Reaped(child);
    tracing::debug!(binary = %binary.display(), pid = child.0.id(), "probing QEMU");
    let answers = ask(ours);
    // QEMU quits on `quit`, or when its monitor's socket closes; killed if it lingers.
    let stderr = child.finish();
    let (version, machines, types, accels) =
        answers.map_err(|(command, source)| ProbeError::Qmp {
            binary: binary.to_path_buf(),
            command,
            source,
            stderr,
        })?;
    let caps = Capabilities::from_replies(binary, &version, &machines, &types, &accels)?;
    tracing::debug!(
        binary = %binary.display(),
        version = %caps.version,
        machines = caps.machines.len(),
        types = caps.types.len(),
        "probed QEMU"
    );
    Ok(caps)
}

type Answers = (Value, Value, Value, Value);

/// The four questions, then `quit`; the error names the command that failed.
fn ask(stream: UnixStream) -> Result<Answers, (&'static str, Box<hvarch_qmp::Error>)> {
    let config = Config {
        greeting_timeout: QUERY_TIMEOUT,
        command_timeout: QUERY_TIMEOUT,
        ..Config::default()
    };
    let qmp = Qmp::from_stream(stream, &config).map_err(|e| ("greeting", Box::new(e)))?;
    let asked = |name: &'static str, args: Value| {
        qmp.execute_raw(name, args).map_err(|e| (name, Box::new(e)))
    };
    let answers = (|| {
        Ok((
            asked("query-version", json!({}))?,
            asked("query-machines", json!({}))?,
            asked("qom-list-types", json!({ "abstract": false }))?,
            asked("qom-list-types", json!({ "implements": "accel" }))?,
        ))
    })();
    // QEMU may close the socket before it replies to `quit`: its answer does not matter.
    let _ = qmp.execute_with_timeout(&hvarch_qmp::Command::bare("quit"), EXIT_TIMEOUT);
    qmp.close();
    answers
}

/// The probed QEMU: reaped (and killed, if it lingers) whatever happens.
struct Reaped(Child);

impl Reaped {
    /// Waits for QEMU to exit (killing it after [`EXIT_TIMEOUT`]) and returns its stderr.
    fn finish(&mut self) -> String {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.0.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        stderr
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Whether this host can run KVM guests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kvm {
    /// `/dev/kvm` opens and creates a VM. A guest can still fail on a paravirtual
    /// `/dev/kvm` (nested virtualization without the features it needs).
    Usable {
        /// `KVM_GET_API_VERSION`.
        api_version: i32,
    },
    /// Why KVM cannot be used.
    Unusable {
        /// E.g. `/dev/kvm: No such file or directory (os error 2)`.
        reason: String,
    },
}

/// Whether KVM can be used here: opens `/dev/kvm`, asks its API version and creates (and
/// closes) a VM.
pub fn kvm() -> Kvm {
    use std::os::fd::AsRawFd;
    let unusable = |reason: String| Kvm::Unusable { reason };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(file) => file,
        Err(e) => return unusable(format!("/dev/kvm: {e}")),
    };
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a number; the
    // descriptor is open for the duration of the call.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version < 0 {
        return unusable(format!(
            "/dev/kvm: KVM_GET_API_VERSION failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    // SAFETY: KVM_CREATE_VM with machine type 0 returns a new descriptor (closed below) or -1.
    let vm = unsafe { libc::ioctl(file.as_raw_fd(), KVM_CREATE_VM as _, 0) };
    if vm < 0 {
        return unusable(format!(
            "/dev/kvm: API version {version}, but KVM_CREATE_VM failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `vm` is a descriptor this function owns and closes once.
    unsafe { libc::close(vm) };
    Kvm::Usable {
        api_version: version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn caps() -> Capabilities {
        Capabilities {
            binary: "/usr/bin/qemu-system-aarch64".into(),
            version: QemuVersion::new(10, 0, 2),
            package: String::new(),
            machines: vec![MachineType {
                name: "virt-10.0".into(),
                alias: Some("virt".into()),
                is_default: false,
            }],
            accelerators: vec!["tcg".into()],
            types: ["virtio-blk-pci", "rng-random"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Replies as QEMU 10.0 (Debian's qemu-system-arm) sends them, trimmed.
    #[test]
    fn replies_of_qemu_10() {
        let version = json!({
            "qemu": {"major": 10, "minor": 0, "micro": 2},
            "package": "Debian 1:10.0.2+ds-1~bpo12+1 "
        });
        let machines = json!([
            {"hotpluggable-cpus": true, "name": "virt-10.0", "numa-mem-supported": true,
             "default-cpu-type": "cortex-a15-arm-cpu", "cpu-max": 512, "deprecated": false,
             "default-ram-id": "mach-virt.ram", "alias": "virt", "acpi": true},
            {"name": "none", "cpu-max": 1, "deprecated": false, "acpi": false},
            {"name": "akita", "cpu-max": 1, "deprecated": true, "acpi": false,
             "is-default": true}
        ]);
        let types = json!([
            {"name": "virtio-blk-pci", "parent": "virtio-blk-pci-base"},
            {"name": "memory-backend-ram", "parent": "memory-backend"},
            {"name": "virtio-blk-pci", "parent": "virtio-blk-pci-base"}
        ]);
        let accels = json!([
            {"name": "tcg-accel", "parent": "accel"},
            {"name": "kvm-accel", "parent": "accel"},
            {"name": "qtest-accel", "parent": "accel"}
        ]);
        let caps = Capabilities::from_replies(
            Path::new("/usr/bin/qemu-system-aarch64"),
            &version,
            &machines,
            &types,
            &accels,
        )
        .expect("valid replies");
        assert_eq!(caps.version, QemuVersion::new(10, 0, 2));
        assert_eq!(caps.package, "Debian 1:10.0.2+ds-1~bpo12+1");
        let names: Vec<&str> = caps.machines.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["akita", "none", "virt-10.0"]);
        assert_eq!(
            caps.default_machine().map(|m| m.name.as_str()),
            Some("akita")
        );
        assert!(caps.has_machine("virt") && caps.has_machine("virt-10.0"));
        assert!(!caps.has_machine("virt-9.2"));
        assert_eq!(caps.accelerators, ["kvm", "qtest", "tcg"]);
        assert_eq!(caps.types.len(), 2);
        assert!(caps.has_type("memory-backend-ram") && !caps.has_type("memory-backend"));
    }

    #[test]
    fn malformed_replies_name_the_command() {
        let path = Path::new("/q");
        let ok = json!([]);
        let version = json!({"qemu": {"major": 10, "minor": 0, "micro": 0}});
        let cases = [
            (
                json!({"qemu": {"major": 10}}),
                ok.clone(),
                ok.clone(),
                "query-version",
            ),
            (version.clone(), json!({}), ok.clone(), "query-machines"),
            (
                version.clone(),
                json!([{"alias": "x"}]),
                ok.clone(),
                "query-machines",
            ),
            (
                version.clone(),
                ok.clone(),
                json!([{"parent": "x"}]),
                "qom-list-types",
            ),
        ];
        for (version, machines, types, command) in cases {
            match Capabilities::from_replies(path, &version, &machines, &types, &ok) {
                Err(e @ ProbeError::Reply { .. }) => {
                    assert!(e.to_string().contains(&format!("`{command}`")), "{e}")
                }
                other => panic!("{command}: {other:?}"),
            }
        }
    }

    #[test]
    fn requirements_and_what_is_missing() {
        let argv = strings(&[
            "qemu",
            "-machine",
            "virt,accel=kvm,usb=off",
            "-device",
            "virtio-blk-pci,id=a",
            "-device",
            "virtio-blk-pci,id=b",
            "-object",
            "rng-random,id=r",
            "-device",
            "intel-iommu",
        ]);
        let req = Requirements::from_argv(&argv);
        assert_eq!(req.machine.as_deref(), Some("virt"));
        assert_eq!(req.accelerator.as_deref(), Some("kvm"));
        assert_eq!(req.devices, ["virtio-blk-pci", "intel-iommu"]);
        assert_eq!(req.objects, ["rng-random"]);
        let caps = caps();
        assert_eq!(
            caps.missing(&req),
            [
                Need::Device("intel-iommu".into()),
                Need::Accelerator("kvm".into())
            ]
        );
        assert_eq!(
            caps.missing(&req.clone().without_accelerator()),
            [Need::Device("intel-iommu".into())]
        );
        let text = caps.check(&req).expect_err("lacks two").to_string();
        assert_eq!(
            text,
            "/usr/bin/qemu-system-aarch64 (QEMU 10.0.2) cannot run this VM: it has no device \
             `intel-iommu`, no accelerator `kvm`"
        );
        let mut q35 = req.without_accelerator();
        q35.machine = Some("q35".into());
        assert_eq!(caps.missing(&q35)[0], Need::Machine("q35".into()));
        assert!(caps
            .check(&Requirements::from_argv(&strings(&["-M", "virt"])))
            .is_ok());
    }

    proptest! {
        /// Whatever the command line, what is missing is exactly what the binary lacks of
        /// what the command line names, each once.
        #[test]
        fn missing_is_needs_minus_capabilities(
            words in prop::collection::vec(
                prop::sample::select(vec![
                    "-machine", "-M", "-device", "-object", "virt", "q35,accel=kvm",
                    "virt,accel=tcg", "virtio-blk-pci,id=x", "intel-iommu", "rng-random",
                    "memory-backend-file,id=m", "", ",", "-append",
                ]),
                0..24,
            )
        ) {
            let argv = strings(&words);
            let req = Requirements::from_argv(&argv);
            let caps = caps();
            let needs: Vec<Need> = req.needs().collect();
            let missing = caps.missing(&req);
            for need in &needs {
                prop_assert_eq!(missing.contains(need), !caps.has(need));
                prop_assert!(!need.name().is_empty() && !need.name().contains(','));
            }
            let unique: std::collections::HashSet<&Need> = needs.iter().collect();
            prop_assert_eq!(unique.len(), needs.len());
            prop_assert_eq!(caps.check(&req).is_ok(), missing.is_empty());
        }
    }

    #[test]
    fn a_missing_binary_is_not_found() {
        let path = Path::new("/nonexistent/qemu-system-aarch64");
        assert!(matches!(
            capabilities(path),
            Err(ProbeError::NotFound { binary }) if binary == path
        ));
        assert!(matches!(query(path), Err(ProbeError::NotFound { .. })));
    }
}
