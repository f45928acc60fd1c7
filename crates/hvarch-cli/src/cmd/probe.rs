//! `hvarch probe`: the host and the QEMU binary's capabilities, and whether a spec can run.
//!
//! QEMU is asked directly: it is started with `-machine none -S -nodefaults -display none
//! -qmp stdio` on one end of a socket pair (no files, no polling) and queried with
//! `query-version`, `query-machines`, `qom-list-types` (concrete types: every device and
//! object type the binary has) and `qom-list-types implements=accel`. The answer is cached
//! per binary for the life of the process, so `cmdline` and `run` pay for one probe at most.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hvarch::{assemble, GuestArch, Syntax, VmSpec};
use serde_json::{json, Value};

use crate::cmd::cmdline::{apply_overrides, parse_arch, Accel};
use crate::spec_file;

/// Arguments of `hvarch probe`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Guest architecture: aarch64 (arm64), x86_64 (amd64), ppc64le or s390x (overrides the
    /// spec's `arch`; default: the spec's, else the host's).
    #[arg(long, value_parser = parse_arch)]
    pub arch: Option<GuestArch>,
    /// Accelerator to check (overrides the spec's `hypervisor.accelerator`).
    #[arg(long, value_enum)]
    pub accel: Option<Accel>,
    /// List every machine type, not only a summary.
    #[arg(long)]
    pub all_machines: bool,
    /// A VM spec (TOML) to check against the binary.
    pub spec: Option<PathBuf>,
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
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// The binary.
    pub binary: PathBuf,
    /// `major.minor.micro` and the package string.
    pub version: String,
    /// Machine types.
    pub machines: Vec<MachineType>,
    /// Accelerators compiled in (`kvm`, `tcg`, …).
    pub accelerators: Vec<String>,
    /// Every concrete QOM type (devices, objects, backends).
    pub types: BTreeSet<String>,
}

impl Capabilities {
    /// Whether `name` is a machine type or alias of the binary.
    pub fn has_machine(&self, name: &str) -> bool {
        self.machines
            .iter()
            .any(|m| m.name == name || m.alias.as_deref() == Some(name))
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
    /// Reads the requirements from an argv in option syntax (binary first).
    pub fn from_argv(argv: &[String]) -> Requirements {
        let mut req = Requirements::default();
        let first = |value: &str| value.split(',').next().unwrap_or("").to_owned();
        for pair in argv.windows(2) {
            let value = pair[1].as_str();
            match pair[0].as_str() {
                "-machine" | "-M" => {
                    req.machine = Some(first(value));
                    req.accelerator = value
                        .split(',')
                        .find_map(|p| p.strip_prefix("accel="))
                        .map(str::to_owned);
                }
                "-device" => push_unique(&mut req.devices, first(value)),
                "-object" => push_unique(&mut req.objects, first(value)),
                _ => {}
            }
        }
        req
    }
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !item.is_empty() && !list.contains(&item) {
        list.push(item);
    }
}

/// One thing a binary lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Missing {
    /// A machine type.
    Machine(String),
    /// A `-device` driver.
    Device(String),
    /// An `-object` type.
    Object(String),
    /// An accelerator.
    Accelerator(String),
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Machine(m) => write!(f, "machine type `{m}`"),
            Missing::Device(d) => write!(f, "device `{d}`"),
            Missing::Object(o) => write!(f, "object type `{o}`"),
            Missing::Accelerator(a) => write!(f, "accelerator `{a}`"),
        }
    }
}

/// What of `req` the binary lacks; the accelerator only when `with_accel`.
pub fn missing(caps: &Capabilities, req: &Requirements, with_accel: bool) -> Vec<Missing> {
    let mut out = Vec::new();
    if let Some(machine) = &req.machine {
        if !caps.has_machine(machine) {
            out.push(Missing::Machine(machine.clone()));
        }
    }
    for device in &req.devices {
        if !caps.types.contains(device) {
            out.push(Missing::Device(device.clone()));
        }
    }
    for object in &req.objects {
        if !caps.types.contains(object) {
            out.push(Missing::Object(object.clone()));
        }
    }
    if with_accel {
        if let Some(accel) = &req.accelerator {
            if !caps.accelerators.contains(accel) {
                out.push(Missing::Accelerator(accel.clone()));
            }
        }
    }
    out
}

/// The error for a non-empty [`missing`] list: names the binary and everything it lacks.
pub fn refusal(caps: &Capabilities, missing: &[Missing]) -> String {
    let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
    format!(
        "{} (QEMU {}) cannot run this VM: it has no {}",
        caps.binary.display(),
        caps.version,
        list.join(", no ")
    )
}

/// Checks that the binary of an assembled VM has its machine, devices and objects (and
/// accelerator when `with_accel`). `Ok(None)` when the binary does not exist (nothing to
/// check against); the error names what is missing.
pub fn check_assembled(
    assembled: &hvarch::Assembled,
    with_accel: bool,
) -> Result<Option<Arc<Capabilities>>, String> {
    if !assembled.qemu_path.exists() {
        return Ok(None);
    }
    let caps = capabilities(&assembled.qemu_path)?;
    let argv = assembled.argv(Syntax::Options).map_err(|e| e.to_string())?;
    let req = Requirements::from_argv(&argv);
    let missing = missing(&caps, &req, with_accel);
    if missing.is_empty() {
        Ok(Some(caps))
    } else {
        Err(refusal(&caps, &missing))
    }
}

type Cache = Mutex<HashMap<PathBuf, Arc<Capabilities>>>;

/// The capabilities of `binary`, probed once per process.
pub fn capabilities(binary: &Path) -> Result<Arc<Capabilities>, String> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(caps) = cache.lock().ok().and_then(|c| c.get(binary).cloned()) {
        return Ok(caps);
    }
    let caps = Arc::new(query(binary)?);
    if let Ok(mut c) = cache.lock() {
        c.insert(binary.to_path_buf(), Arc::clone(&caps));
    }
    Ok(caps)
}

/// Starts `binary` with nothing but a QMP monitor on a socket pair and asks it.
fn query(binary: &Path) -> Result<Capabilities, String> {
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| format!("cannot create a socket pair: {e}"))?;
    let theirs_out = theirs
        .try_clone()
        .map_err(|e| format!("cannot clone a socket: {e}"))?;
    let mut child = Command::new(binary)
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
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs_out)))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let config = hvarch_qmp::Config {
        greeting_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(10),
        ..hvarch_qmp::Config::default()
    };
    let answer = hvarch_qmp::Qmp::from_stream(ours, &config)
        .map_err(|e| e.to_string())
        .and_then(|qmp| {
            let ask = |name: &str, args: Value| {
                qmp.execute_raw(name, args)
                    .map_err(|e| format!("{name}: {e}"))
            };
            let version = ask("query-version", json!({}))?;
            let machines = ask("query-machines", json!({}))?;
            let types = ask("qom-list-types", json!({ "abstract": false }))?;
            let accels = ask("qom-list-types", json!({ "implements": "accel" }))?;
            let _ = qmp
                .execute_with_timeout(&hvarch_qmp::Command::bare("quit"), Duration::from_secs(2));
            qmp.close();
            Ok((version, machines, types, accels))
        });
    // QEMU quits on `quit`, or when its monitor's socket closes; kill it if it lingers.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let (version, machines, types, accels) = answer.map_err(|e| {
        format!(
            "cannot probe {}: {e}{}",
            binary.display(),
            if stderr.trim().is_empty() {
                String::new()
            } else {
                format!("; QEMU said: {}", stderr.trim())
            }
        )
    })?;
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect()
    };
    let q = &version["qemu"];
    let package = version["package"].as_str().unwrap_or("").trim();
    let version = format!(
        "{}.{}.{}{}",
        q["major"],
        q["minor"],
        q["micro"],
        if package.is_empty() {
            String::new()
        } else {
            format!(" ({package})")
        }
    );
    let mut machines: Vec<MachineType> = machines
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some(MachineType {
                name: m.get("name")?.as_str()?.to_owned(),
                alias: m.get("alias").and_then(Value::as_str).map(str::to_owned),
                is_default: m.get("is-default").and_then(Value::as_bool) == Some(true),
            })
        })
        .collect();
    machines.sort_by(|a, b| a.name.cmp(&b.name));
    let mut accelerators: Vec<String> = names(&accels)
        .into_iter()
        .map(|n| n.strip_suffix("-accel").unwrap_or(&n).to_owned())
        .collect();
    accelerators.sort();
    Ok(Capabilities {
        binary: binary.to_path_buf(),
        version,
        machines,
        accelerators,
        types: names(&types).into_iter().collect(),
    })
}

/// Whether KVM can be used here, and why not.
pub fn kvm_status() -> Result<String, String> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a number; the
    // descriptor is open for the duration of the call.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version < 0 {
        return Err(format!(
            "/dev/kvm: KVM_GET_API_VERSION failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    // SAFETY: KVM_CREATE_VM with machine type 0 returns a new descriptor (closed below) or -1.
    let vm = unsafe { libc::ioctl(file.as_raw_fd(), KVM_CREATE_VM as _, 0) };
    if vm < 0 {
        return Err(format!(
            "/dev/kvm: API version {version}, but KVM_CREATE_VM failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `vm` is a descriptor this function owns and closes once.
    unsafe { libc::close(vm) };
    Ok(format!(
        "/dev/kvm: API version {version}, KVM_CREATE_VM works; a guest can still fail on a \
         paravirtual /dev/kvm"
    ))
}

/// Runs the subcommand; exits non-zero when a spec was given and the binary cannot run it.
pub fn run(args: &Args) -> Result<(), String> {
    let spec = match &args.spec {
        Some(path) => Some(spec_file::load(path)?),
        None => None,
    };
    let mut spec = spec.unwrap_or_else(VmSpec::kata_default);
    apply_overrides(&mut spec, args.arch, args.accel);
    let context = |e: hvarch::Error| match &args.spec {
        Some(path) => format!("{}: {e}", path.display()),
        None => format!("default VM: {e}"),
    };
    let arch = spec.guest_arch().map_err(context)?;
    let backend = hvarch::backend(arch, &spec.hypervisor).map_err(context)?;
    let binary = backend
        .qemu_path()
        .map_err(|e| format!("`hypervisor.hypervisor_path`: {e}"))?;

    println!("host");
    println!("  arch:         {}", std::env::consts::ARCH);
    println!("  cpus:         {}", hvarch::host::host_cpus());
    if let Ok(mb) = hvarch::host::host_memory_mb() {
        println!("  memory:       {mb} MiB");
    }
    match kvm_status() {
        Ok(text) => println!("  kvm:          usable ({text})"),
        Err(e) => println!("  kvm:          not usable ({e})"),
    }
    println!("qemu for {arch} guests");
    println!("  binary:       {}", binary.display());
    let caps = capabilities(&binary)?;
    println!("  version:      {}", caps.version);
    println!("  accelerators: {}", caps.accelerators.join(", "));
    let default = caps
        .machines
        .iter()
        .find(|m| m.is_default)
        .map(|m| m.name.as_str())
        .unwrap_or("none");
    let aliases: Vec<String> = caps
        .machines
        .iter()
        .filter_map(|m| m.alias.as_ref().map(|a| format!("{a} ({})", m.name)))
        .collect();
    println!(
        "  machines:     {} types, default {default}; aliases: {}",
        caps.machines.len(),
        aliases.join(", ")
    );
    if args.all_machines {
        for m in &caps.machines {
            println!("    {}", m.name);
        }
    }
    println!("  qom types:    {}", caps.types.len());

    let Some(path) = &args.spec else {
        return Ok(());
    };
    let assembled = assemble(&spec).map_err(context)?;
    let argv = assembled.argv(Syntax::Options).map_err(context)?;
    let req = Requirements::from_argv(&argv);
    println!("spec {}", path.display());
    let mark = |ok: bool| if ok { "ok" } else { "MISSING" };
    if let Some(machine) = &req.machine {
        println!("  machine {machine}: {}", mark(caps.has_machine(machine)));
    }
    if let Some(accel) = &req.accelerator {
        let built = caps.accelerators.contains(accel);
        let note = if accel == "kvm" && kvm_status().is_err() {
            " (but KVM is not usable on this host)"
        } else {
            ""
        };
        println!("  accelerator {accel}: {}{note}", mark(built));
    }
    for device in &req.devices {
        println!("  device {device}: {}", mark(caps.types.contains(device)));
    }
    for object in &req.objects {
        println!("  object {object}: {}", mark(caps.types.contains(object)));
    }
    let missing = missing(&caps, &req, true);
    if missing.is_empty() {
        println!("result: {} can run this VM", binary.display());
        Ok(())
    } else {
        Err(refusal(&caps, &missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Capabilities {
        Capabilities {
            binary: "/usr/bin/qemu-system-aarch64".into(),
            version: "10.0.2".into(),
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

    #[test]
    fn requirements_from_argv() {
        let argv: Vec<String> = [
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
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let req = Requirements::from_argv(&argv);
        assert_eq!(req.machine.as_deref(), Some("virt"));
        assert_eq!(req.accelerator.as_deref(), Some("kvm"));
        assert_eq!(req.devices, ["virtio-blk-pci", "intel-iommu"]);
        assert_eq!(req.objects, ["rng-random"]);
        let caps = caps();
        assert_eq!(
            missing(&caps, &req, false),
            [Missing::Device("intel-iommu".into())]
        );
        let all = missing(&caps, &req, true);
        assert_eq!(all.len(), 2);
        let text = refusal(&caps, &all);
        assert!(
            text.contains("has no device `intel-iommu`, no accelerator `kvm`"),
            "{text}"
        );
        let mut q35 = req.clone();
        q35.machine = Some("q35".into());
        assert!(missing(&caps, &q35, false).contains(&Missing::Machine("q35".into())));
    }
}
