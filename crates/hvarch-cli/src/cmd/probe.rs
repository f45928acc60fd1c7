//! `hvarch probe`: the host and the QEMU binary's capabilities, and whether a spec can run.
//!
//! The probing is [`hvarch::probe`]'s; this module only prints it, as text for people or as
//! JSON for scripts (`--format json`). The JSON shape is stable (new members may be added;
//! none is removed or changes meaning without a new `schema`):
//!
//! ```json
//! {
//!   "schema": 1,
//!   "host": {
//!     "arch": "x86_64", "cpus": 2, "memory_mb": 24105,
//!     "kvm": { "usable": false, "api_version": null, "reason": "/dev/kvm: No such file or directory (os error 2)" }
//!   },
//!   "qemu": {
//!     "guest_arch": "aarch64",
//!     "binary": "/usr/bin/qemu-system-aarch64",
//!     "version": "10.0.2", "package": "Debian 1:10.0.2+ds-1~bpo12+1",
//!     "accelerators": ["kvm", "qtest", "tcg"],
//!     "default_machine": null,
//!     "machines": [ { "name": "virt-10.0", "alias": "virt", "default": false } ],
//!     "qom_types": 1234
//!   },
//!   "spec": {
//!     "path": "vm.toml",
//!     "needs": [ { "kind": "machine", "name": "virt", "available": true },
//!                { "kind": "device", "name": "intel-iommu", "available": false } ],
//!     "can_run": false
//!   }
//! }
//! ```
//!
//! `host.memory_mb` is `null` when it cannot be read; `kvm.api_version` is set when KVM is
//! usable, `kvm.reason` when it is not; `spec` is `null` without a SPEC. `needs` lists the
//! machine, the `-device` drivers, the `-object` types, then the accelerator (`kind`:
//! `machine`, `device`, `object`, `accelerator`). With a SPEC the binary cannot run the
//! exit status is 1 in both formats (the JSON is printed first, `can_run` false).

use std::path::PathBuf;

use clap::ValueEnum;
use hvarch::probe::{self, Capabilities, Kvm, Need, Requirements};
use hvarch::{assemble, GuestArch};
use serde::Serialize;

use crate::outln;
use crate::output::{CliResult, Output};
use crate::spec_file::{self, SpecOptions};

/// Arguments of `hvarch probe`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub options: SpecOptions,
    /// List every machine type, not only a summary (the JSON always lists them).
    #[arg(long)]
    pub all_machines: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// A VM spec (TOML) to check against the binary.
    pub spec: Option<PathBuf>,
}

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned lines for people.
    Text,
    /// One JSON object (see the module docs for its shape).
    Json,
}

/// The JSON document: its shape is documented in the module docs and tested.
#[derive(Debug, Serialize)]
struct Report {
    schema: u32,
    host: Host,
    qemu: Qemu,
    spec: Option<SpecReport>,
}

#[derive(Debug, Serialize)]
struct Host {
    arch: &'static str,
    cpus: u32,
    memory_mb: Option<u64>,
    kvm: KvmReport,
}

#[derive(Debug, Serialize)]
struct KvmReport {
    usable: bool,
    api_version: Option<i32>,
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct Qemu {
    guest_arch: GuestArch,
    binary: PathBuf,
    version: String,
    package: String,
    accelerators: Vec<String>,
    default_machine: Option<String>,
    machines: Vec<Machine>,
    qom_types: usize,
}

#[derive(Debug, Serialize)]
struct Machine {
    name: String,
    alias: Option<String>,
    default: bool,
}

#[derive(Debug, Serialize)]
struct SpecReport {
    path: PathBuf,
    needs: Vec<NeedReport>,
    can_run: bool,
}

#[derive(Debug, Serialize)]
struct NeedReport {
    kind: &'static str,
    name: String,
    available: bool,
}

/// Runs the subcommand; exits non-zero when a spec was given and the binary cannot run it.
pub fn run(args: &Args) -> CliResult {
    let loaded = spec_file::load(args.spec.as_deref(), &args.options)?;
    loaded.print_warnings();
    let arch = loaded.spec.guest_arch().map_err(|e| loaded.context(e))?;
    let backend = hvarch::backend(arch, &loaded.spec.hypervisor).map_err(|e| loaded.context(e))?;
    let binary = backend
        .qemu_path()
        .map_err(|e| format!("`hypervisor.hypervisor_path`: {e}"))?;
    let caps = probe::capabilities(&binary).map_err(|e| e.to_string())?;
    let spec = match &loaded.path {
        Some(path) => {
            let assembled = assemble(&loaded.spec).map_err(|e| loaded.context(e))?;
            let req = Requirements::of(&assembled).map_err(|e| loaded.context(e))?;
            Some((path.clone(), req))
        }
        None => None,
    };
    let report = report(arch, &caps, probe::kvm(), spec.as_ref());
    let mut out = Output::stdout();
    match args.format {
        Format::Text => print_text(&mut out, &report, args.all_machines)?,
        Format::Json => {
            out.line(serde_json::to_string_pretty(&report).map_err(|e| format!("JSON: {e}"))?)?
        }
    }
    match &spec {
        Some((_, req)) => caps.check(req).map_err(|e| e.to_string().into()),
        None => Ok(()),
    }
}

fn report(
    arch: GuestArch,
    caps: &Capabilities,
    kvm: Kvm,
    spec: Option<&(PathBuf, Requirements)>,
) -> Report {
    let kvm = match kvm {
        Kvm::Usable { api_version } => KvmReport {
            usable: true,
            api_version: Some(api_version),
            reason: None,
        },
        Kvm::Unusable { reason } => KvmReport {
            usable: false,
            api_version: None,
            reason: Some(reason),
        },
    };
    Report {
        schema: 1,
        host: Host {
            arch: std::env::consts::ARCH,
            cpus: hvarch::host::host_cpus(),
            memory_mb: hvarch::host::host_memory_mb().ok(),
            kvm,
        },
        qemu: Qemu {
            guest_arch: arch,
            binary: caps.binary.clone(),
            version: caps.version.to_string(),
            package: caps.package.clone(),
            accelerators: caps.accelerators.clone(),
            default_machine: caps.default_machine().map(|m| m.name.clone()),
            machines: caps
                .machines
                .iter()
                .map(|m| Machine {
                    name: m.name.clone(),
                    alias: m.alias.clone(),
                    default: m.is_default,
                })
                .collect(),
            qom_types: caps.types.len(),
        },
        spec: spec.map(|(path, req)| {
            let needs: Vec<NeedReport> = req
                .needs()
                .map(|need: Need| NeedReport {
                    kind: need.kind(),
                    available: caps.has(&need),
                    name: need.name().to_owned(),
                })
                .collect();
            SpecReport {
                path: path.clone(),
                can_run: needs.iter().all(|n| n.available),
                needs,
            }
        }),
    }
}

fn print_text(out: &mut Output, report: &Report, all_machines: bool) -> CliResult {
    let Report {
        host, qemu, spec, ..
    } = report;
    outln!(out, "host")?;
    outln!(out, "  arch:         {}", host.arch)?;
    outln!(out, "  cpus:         {}", host.cpus)?;
    if let Some(mb) = host.memory_mb {
        outln!(out, "  memory:       {mb} MiB")?;
    }
    match (&host.kvm.api_version, &host.kvm.reason) {
        (Some(version), _) => outln!(
            out,
            "  kvm:          usable (/dev/kvm: API version {version}, KVM_CREATE_VM works; a \
             guest can still fail on a paravirtual /dev/kvm)"
        )?,
        (None, reason) => outln!(
            out,
            "  kvm:          not usable ({})",
            reason.as_deref().unwrap_or("unknown")
        )?,
    }
    outln!(out, "qemu for {} guests", qemu.guest_arch)?;
    outln!(out, "  binary:       {}", qemu.binary.display())?;
    if qemu.package.is_empty() {
        outln!(out, "  version:      {}", qemu.version)?;
    } else {
        outln!(out, "  version:      {} ({})", qemu.version, qemu.package)?;
    }
    outln!(out, "  accelerators: {}", qemu.accelerators.join(", "))?;
    let aliases: Vec<String> = qemu
        .machines
        .iter()
        .filter_map(|m| m.alias.as_ref().map(|a| format!("{a} ({})", m.name)))
        .collect();
    outln!(
        out,
        "  machines:     {} types, default {}; aliases: {}",
        qemu.machines.len(),
        qemu.default_machine.as_deref().unwrap_or("none"),
        aliases.join(", ")
    )?;
    if all_machines {
        for m in &qemu.machines {
            outln!(out, "    {}", m.name)?;
        }
    }
    outln!(out, "  qom types:    {}", qemu.qom_types)?;
    let Some(spec) = spec else {
        return Ok(());
    };
    outln!(out, "spec {}", spec.path.display())?;
    for need in &spec.needs {
        let note = if need.kind == "accelerator" && need.name == "kvm" && !host.kvm.usable {
            " (but KVM is not usable on this host)"
        } else {
            ""
        };
        let mark = if need.available { "ok" } else { "MISSING" };
        outln!(out, "  {} {}: {mark}{note}", need.kind, need.name)?;
    }
    if spec.can_run {
        outln!(out, "result: {} can run this VM", qemu.binary.display())?;
    }
    Ok(())
}
