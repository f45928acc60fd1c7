//! Reading Kata Containers' own `configuration.toml`: its `[hypervisor.qemu]` table becomes
//! the [`VmSpec`] of the VM Kata would build.
//!
//! A Kata installation describes its VM in `/etc/kata-containers/configuration.toml` or
//! `/usr/share/defaults/kata-containers/configuration-qemu.toml` (the Go runtime and
//! runtime-rs read the same table). [`from_file`] / [`from_str`] read such a file as it is
//! and apply Kata's own rules (`katautils/config.go`), so a team can compare, switch, or
//! drive an existing configuration from Rust:
//!
//! - **Defaults and clamping.** `default_vcpus` unset or 0 is 1, negative or above the host's
//!   CPUs (capped by the backend's limit) is that count, a fraction rounds up, and it never
//!   exceeds the vCPU ceiling; `default_maxvcpus` 0 or at least the host's CPUs is the host's
//!   CPUs, then capped by the backend; `default_memory` below 256 MiB is 2048 MiB;
//!   `default_maxmemory` 0 or above the host's memory is the host's memory (the `maxmem`
//!   ceiling); `memory_slots` 0 is 10; `default_bridges` 0 is 1 and above 5 is 5;
//!   `pcie_root_port` above 16 is 16; `entropy_source` empty is `/dev/urandom`; `shared_fs`
//!   empty is virtio-fs, which needs `virtio_fs_daemon`; `virtio_fs_cache` empty is `auto`.
//!   A negative value for an unsigned key is a type error, as in Kata's decoder.
//! - **Rootfs.** `image` and `initrd` exclude each other and one is needed. The image goes on
//!   an NVDIMM unless `disable_image_nvdimm`, which Kata forces for `microvm` and, on arm64,
//!   when neither `firmware` nor `pflashes` gives the guest ACPI.
//! - **Allow-lists.** Kata applies `valid_hypervisor_paths` and
//!   `valid_virtio_fs_daemon_paths` (globs, matched like Go's `filepath.Match`) to annotation
//!   overrides; hvarch takes no annotations and applies them to the file's own `path` and
//!   `virtio_fs_daemon` instead, so a file never runs a binary its own list excludes.
//! - **Kernel parameters**, in Kata's order: for an image, the systemd unit
//!   (`systemd.unit=kata-containers.target`, networkd masked); `scsi_mod.scan=none` with
//!   virtio-scsi; the agent's parameters from `[agent.kata]` (`enable_debug` →
//!   `agent.log=debug`, `enable_tracing` → `agent.trace=true`, `debug_console_enabled` →
//!   `agent.debug_console agent.debug_console_vport=1026`, `cdh_api_timeout`); then the
//!   file's `kernel_params`, which win. (`kernel_modules` reach the agent over its API when
//!   Kata creates the sandbox, not the kernel command line: hvarch returns them in
//!   [`KataSpec::kernel_modules`] and warns.)
//! - **Warnings and errors.** A key hvarch knows but does not honour is a [`KataWarning`]
//!   naming the key and why, when the file sets it to anything but its zero value; a key of
//!   no effect on the VM (other hypervisors' keys, annotation allow-lists, container and
//!   agent settings) is accepted silently. An unknown key is an error naming it, with "did
//!   you mean" for near misses, unless [`KataOptions::lenient`] makes it a warning. A value
//!   of the wrong type names the key, its line and the type expected. A confidential guest
//!   is refused outright: hvarch cannot build one, and must not quietly build an ordinary VM
//!   instead. The other tables (`[agent.kata]` aside, `[runtime]`, `[factory]`, …) are
//!   accepted and ignored.
//!
//! What a file cannot say is in [`KataOptions`]: the sandbox id, the guest architecture
//! (inferred from `machine_type`: `virt` is arm64, `q35`/`pc`/`microvm` x86_64), the host's
//! CPUs and memory (read from the host unless given), the sandbox's shared directory (Kata's
//! `/run/kata-containers/shared/sandboxes/<id>/shared`, mounted by the guest as `kataShared`)
//! and the vsock context id (Kata 2.x and later always reach the agent over vsock; without a
//! context id the agent channel is virtio-serial, as in Kata 1.x).
//!
//! ```
//! use hvarch::kata_config::{from_str, KataOptions};
//! let kata = from_str(r#"
//!     [hypervisor.qemu]
//!     path = "/usr/bin/qemu-system-aarch64"
//!     kernel = "/usr/share/kata-containers/vmlinux.container"
//!     initrd = "/usr/share/kata-containers/kata-containers-initrd.img"
//!     machine_type = "virt"
//!     default_vcpus = -1
//!     default_memory = 4096
//!     shared_fs = "virtio-9p"
//!     enable_virtio_mem = true
//!
//!     [agent.kata]
//!     enable_debug = true
//! "#, &KataOptions { host_cpus: Some(8), host_memory_mb: Some(16384), ..KataOptions::new("s1") })
//! .unwrap();
//! assert_eq!(kata.spec.arch, Some(hvarch::GuestArch::Aarch64));
//! assert_eq!(kata.spec.hypervisor.num_vcpus, 8);
//! assert_eq!(kata.spec.hypervisor.memory_mb, 4096);
//! assert!(kata.spec.hypervisor.kernel_params.to_string().contains("agent.log=debug"));
//! assert_eq!(kata.warnings[0].key, "hypervisor.qemu.enable_virtio_mem");
//! assert_eq!(kata.warnings[0].line, Some(10));
//! ```

mod error;
mod keys;
mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hvarch_arch::guest_arch::GuestArch;
use hvarch_arch::machine::MICROVM;
use hvarch_arch::resources::Volume;
use hvarch_arch::settings::{
    BlockDriver, HypervisorConfig, InodeFileHandles, SharedFs, VirtioFsCache, MAX_PCI_BRIDGES,
};
use hvarch_devices::config::{Monitor, MonitorEndpoint, MonitorMode, Sandbox};
use hvarch_devices::kernel_params::KernelParams;
use serde::Deserialize;

pub use error::{KataError, KataWarning, WarningKind};

use crate::assemble::MAX_PCIE_ROOT_PORTS;
use crate::spec::VmSpec;
use keys::{Role, AGENT_KEYS, QEMU_KEYS};
use table::{glob_match, Checked, RawTable, Unknown};

/// The tag Kata's guest agent mounts the sandbox's shared directory by.
pub const SHARED_TAG: &str = "kataShared";
/// Kata's default memory, used when `default_memory` is unset or below [`MIN_MEMORY_MB`].
pub const DEFAULT_MEMORY_MB: u64 = 2048;
/// The least memory Kata accepts (`vc.MinHypervisorMemory`).
pub const MIN_MEMORY_MB: u64 = 256;
/// Kata's default number of memory slots.
pub const DEFAULT_MEMORY_SLOTS: u32 = 10;
/// The systemd parameters Kata gives a guest booted from an image (`systemdKernelParam`).
pub const SYSTEMD_PARAMS: &[(&str, &str)] = &[
    ("systemd.unit", "kata-containers.target"),
    ("systemd.mask", "systemd-networkd.service"),
    ("systemd.mask", "systemd-networkd.socket"),
];
/// The vsock port of the agent's debug console (`agent.debug_console_vport`).
pub const DEBUG_CONSOLE_VPORT: &str = "1026";

/// What a Kata configuration file cannot say (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KataOptions {
    /// The sandbox id (the VM's name and runtime directory).
    pub id: String,
    /// The guest architecture; inferred from `machine_type` when unset (`virt`: aarch64;
    /// `q35`, `pc`, `pc-lite`, `microvm`: x86_64; `pseries`: ppc64le; `s390-ccw-virtio`:
    /// s390x), else the host's.
    pub arch: Option<GuestArch>,
    /// The host's CPUs (the vCPU clamps); this process's CPU count when unset.
    pub host_cpus: Option<u32>,
    /// The host's memory in MiB (the `default_maxmemory` clamp); `MemTotal` when unset.
    pub host_memory_mb: Option<u64>,
    /// An unknown key of `[hypervisor.qemu]` is a warning instead of an error.
    pub lenient: bool,
    /// The sandbox's shared directory, shared with the guest under [`SHARED_TAG`] the way
    /// `shared_fs` says (Kata: `/run/kata-containers/shared/sandboxes/<id>/shared`). None:
    /// nothing is shared.
    pub shared_dir: Option<PathBuf>,
    /// The guest's vsock context id: the agent is reached over vhost-vsock (Kata 2.x and
    /// later) instead of the virtio-serial channel. Also needed by a file with Kata 1.x's
    /// `use_vsock = true`.
    pub vsock_cid: Option<u32>,
}

impl KataOptions {
    /// Options for sandbox `id`, everything else unset.
    pub fn new(id: impl Into<String>) -> Self {
        KataOptions {
            id: id.into(),
            arch: None,
            host_cpus: None,
            host_memory_mb: None,
            lenient: false,
            shared_dir: None,
            vsock_cid: None,
        }
    }
}

impl Default for KataOptions {
    /// Options for sandbox `kata`.
    fn default() -> Self {
        KataOptions::new("kata")
    }
}

/// A Kata configuration read into a [`VmSpec`].
#[derive(Clone, Debug, PartialEq)]
pub struct KataSpec {
    /// The VM Kata would build (assemble it with [`crate::assemble()`]).
    pub spec: VmSpec,
    /// What was accepted but not done as written.
    pub warnings: Vec<KataWarning>,
    /// `[agent.kata] kernel_modules`: modules (with parameters) Kata asks its agent to load
    /// when it creates the sandbox.
    pub kernel_modules: Vec<String>,
    /// The protocol of the debug monitor Kata adds with `enable_debug` and
    /// `extra_monitor_socket` (see [`KataSpec::extra_monitors`]).
    pub extra_monitor: Option<MonitorMode>,
}

/// The file name of Kata's extra debug monitor socket in the runtime directory.
pub const EXTRA_MONITOR_SOCKET: &str = "extra-monitor.sock";

impl KataSpec {
    /// The monitors to add at launch ([`crate::LaunchOptions::monitors`]): Kata's extra
    /// debug monitor (`extra_monitor_socket` with `enable_debug`) on
    /// `<runtime_dir>/extra-monitor.sock`, if the file asks for one. Anyone who can reach it
    /// controls QEMU: for debugging only, as Kata warns.
    pub fn extra_monitors(&self, runtime_dir: &Path) -> Vec<Monitor> {
        self.extra_monitor
            .map(|mode| Monitor {
                id: "extra-monitor".into(),
                endpoint: MonitorEndpoint::Path(runtime_dir.join(EXTRA_MONITOR_SOCKET)),
                mode,
            })
            .into_iter()
            .collect()
    }
}

/// Reads the Kata configuration file at `path` (see [`from_str`]).
pub fn from_file(path: &Path, options: &KataOptions) -> Result<KataSpec, KataError> {
    let text = std::fs::read_to_string(path).map_err(|source| KataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_str(&text, options)
}

/// The parts of a Kata configuration file hvarch reads.
#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    hypervisor: BTreeMap<String, RawTable>,
    #[serde(default)]
    agent: BTreeMap<String, RawTable>,
}

/// Reads a Kata configuration (see the [module docs](self)).
pub fn from_str(text: &str, options: &KataOptions) -> Result<KataSpec, KataError> {
    let file: RawFile = toml::from_str(text).map_err(|e| KataError::Syntax {
        message: e.to_string().trim_end().to_owned(),
    })?;
    let qemu = file
        .hypervisor
        .get("qemu")
        .ok_or_else(|| KataError::NoQemuTable {
            found: file.hypervisor.keys().cloned().collect(),
        })?;
    let mut warnings = Vec::new();
    let unknown = if options.lenient {
        Unknown::Warn
    } else {
        Unknown::Error
    };
    let q = Checked::new(
        text,
        "hypervisor.qemu",
        qemu,
        &keys::qemu_types(),
        unknown,
        &mut warnings,
    )?;
    let empty = RawTable::new();
    let agent = Checked::new(
        text,
        "agent.kata",
        file.agent.get("kata").unwrap_or(&empty),
        AGENT_KEYS,
        Unknown::Ignore,
        &mut warnings,
    )?;
    Reader {
        q: &q,
        agent: &agent,
        options,
        warnings,
    }
    .read()
}

/// The conversion, with the checked tables at hand.
struct Reader<'a> {
    q: &'a Checked,
    agent: &'a Checked,
    options: &'a KataOptions,
    warnings: Vec<KataWarning>,
}

impl Reader<'_> {
    fn read(mut self) -> Result<KataSpec, KataError> {
        let q = self.q;
        self.refuse_confidential()?;
        self.warn_ignored();
        let mut h = HypervisorConfig::default();
        self.binaries(&mut h)?;
        self.boot(&mut h)?;
        h.machine_type = q.non_empty("machine_type").map(str::to_owned);
        h.machine_accelerators = comma_list(q.str("machine_accelerators")).join(",");
        h.cpu_features = comma_list(q.str("cpu_features"));
        h.debug = q.bool("enable_debug");
        h.disable_nesting_checks = q.bool("disable_nesting_checks");
        h.seccomp_sandbox = self.seccomp_sandbox()?;
        let arch = self.guest_arch(h.machine_type.as_deref())?;
        let host_cpus = match self.options.host_cpus {
            Some(n) => n.max(1),
            None => crate::host::host_cpus(),
        };
        let host_memory_mb = match self.options.host_memory_mb {
            Some(mb) => mb.max(1),
            None => crate::host::host_memory_mb()?,
        };
        let arch_max = self.backend_max_vcpus(arch, &h)?;
        self.vcpus(&mut h, host_cpus, arch_max)?;
        let max_memory_mb = self.memory(&mut h, host_memory_mb);
        self.devices(&mut h);
        self.nvdimm(&mut h, arch);
        self.block(&mut h)?;
        self.shared_fs(&mut h)?;
        self.vfio_ports()?;
        h.kernel_params = self.kernel_params(&h)?;

        let mut spec = VmSpec::new(self.options.id.clone());
        spec.arch = Some(arch);
        spec.host_cpus = Some(host_cpus);
        spec.host_memory_mb = Some(max_memory_mb);
        self.agent_transport(&mut spec)?;
        if let Some(dir) = &self.options.shared_dir {
            if h.shared_fs == SharedFs::None {
                self.warnings.push(q.warning(
                    "shared_fs",
                    WarningKind::NotHonoured {
                        reason: "`none` shares nothing: the sandbox's shared directory is not \
                                 shared",
                    },
                ));
            } else {
                spec.volumes.push(Volume {
                    mount_tag: SHARED_TAG.into(),
                    host_path: dir.clone(),
                });
            }
        }
        spec.hypervisor = h;
        let extra_monitor = self.extra_monitor(spec.hypervisor.debug)?;
        let kernel_modules = self.agent.list("kernel_modules").to_vec();
        if !kernel_modules.is_empty() {
            self.warnings.push(self.agent.warning(
                "kernel_modules",
                WarningKind::NotHonoured {
                    reason: "Kata sends them to its agent when it creates the sandbox; they are \
                             not part of the VM (see KataSpec::kernel_modules)",
                },
            ));
        }
        // In file order; adjustments of keys the file leaves out last.
        self.warnings.sort_by_key(|w| (w.line.is_none(), w.line));
        Ok(KataSpec {
            spec,
            warnings: self.warnings,
            kernel_modules,
            extra_monitor,
        })
    }

    /// `extra_monitor_socket`: a debug monitor, only with `enable_debug` (as Kata does).
    fn extra_monitor(&mut self, debug: bool) -> Result<Option<MonitorMode>, KataError> {
        let q = self.q;
        let mode = match q.str("extra_monitor_socket") {
            "" => return Ok(None),
            "hmp" => MonitorMode::Readline,
            "qmp" => MonitorMode::Control,
            "qmp-pretty" => {
                self.warnings.push(q.warning(
                    "extra_monitor_socket",
                    WarningKind::Adjusted {
                        reason: "a plain QMP monitor: pretty-printed JSON is not modelled".into(),
                    },
                ));
                MonitorMode::Control
            }
            other => {
                return Err(q.invalid(
                    "extra_monitor_socket",
                    format!("{other:?}"),
                    "Kata knows hmp, qmp and qmp-pretty",
                ))
            }
        };
        if !debug {
            self.warnings.push(q.warning(
                "extra_monitor_socket",
                WarningKind::Adjusted {
                    reason: "no extra monitor: Kata adds it only with `enable_debug = true`".into(),
                },
            ));
            return Ok(None);
        }
        Ok(Some(mode))
    }

    /// Kata's confidential guests: refused, never silently downgraded.
    fn refuse_confidential(&self) -> Result<(), KataError> {
        for key in ["confidential_guest", "sev_snp_guest"] {
            if self.q.bool(key) {
                return Err(KataError::Unsupported {
                    key: self.q.full(key),
                    line: self.q.line(key),
                    reason: "hvarch cannot build a confidential guest (SEV, SNP, TDX, SE, CCA)",
                });
            }
        }
        Ok(())
    }

    /// A warning for each [`Role::Ignored`] key the file sets.
    fn warn_ignored(&mut self) {
        for key in QEMU_KEYS {
            if let Role::Ignored(reason) = key.role {
                if self.q.is_set(key.name) {
                    self.warnings.push(
                        self.q
                            .warning(key.name, WarningKind::NotHonoured { reason }),
                    );
                }
            }
        }
    }

    /// `path` and `virtio_fs_daemon`, each checked against its allow-list.
    fn binaries(&self, h: &mut HypervisorConfig) -> Result<(), KataError> {
        let q = self.q;
        for (key, list) in [
            ("path", "valid_hypervisor_paths"),
            ("virtio_fs_daemon", "valid_virtio_fs_daemon_paths"),
        ] {
            let (Some(path), globs) = (q.non_empty(key), q.list(list)) else {
                continue;
            };
            if !globs.is_empty() && !globs.iter().any(|g| glob_match(g, path)) {
                return Err(q.invalid(
                    key,
                    format!("{path:?}"),
                    format!("not in `{list}` ({})", globs.join(", ")),
                ));
            }
        }
        h.hypervisor_path = q.non_empty("path").map(PathBuf::from);
        h.virtio_fs_daemon = q.non_empty("virtio_fs_daemon").map(PathBuf::from);
        Ok(())
    }

    /// Kernel, initrd or image, firmware, pflash.
    fn boot(&mut self, h: &mut HypervisorConfig) -> Result<(), KataError> {
        let q = self.q;
        h.kernel_path = Some(
            q.non_empty("kernel")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(crate::spec::DEFAULT_KERNEL)),
        );
        h.initrd_path = q.non_empty("initrd").map(PathBuf::from);
        h.image_path = q.non_empty("image").map(PathBuf::from);
        match (&h.image_path, &h.initrd_path) {
            (Some(_), Some(_)) => {
                return Err(q.invalid(
                    "image",
                    format!("{:?}", q.str("image")),
                    "Kata does not support both an image and an initrd (`initrd` is set too)",
                ))
            }
            (None, None) => {
                return Err(KataError::Invalid {
                    key: q.full("initrd"),
                    line: None,
                    value: "\"\"".into(),
                    reason: "set `initrd` or `image`: the guest needs a root filesystem".into(),
                })
            }
            _ => {}
        }
        match q.str("rootfs_type") {
            "" | "ext4" => {}
            "xfs" | "erofs" => {
                if h.image_path.is_some() {
                    self.warnings.push(q.warning(
                        "rootfs_type",
                        WarningKind::NotHonoured {
                            reason: "hvarch's root parameters mount the image as ext4",
                        },
                    ));
                }
            }
            other => {
                return Err(q.invalid(
                    "rootfs_type",
                    format!("{other:?}"),
                    "Kata knows ext4, xfs and erofs",
                ))
            }
        }
        h.firmware_path = q.non_empty("firmware").map(PathBuf::from);
        h.pflashes = q.list("pflashes").iter().map(PathBuf::from).collect();
        Ok(())
    }

    /// `seccompsandbox`: QEMU's `-sandbox` value.
    fn seccomp_sandbox(&self) -> Result<Option<Sandbox>, KataError> {
        let value = self.q.str("seccompsandbox");
        if value.is_empty() {
            return Ok(None);
        }
        parse_sandbox(value).map_err(|reason| {
            self.q
                .invalid("seccompsandbox", format!("{value:?}"), reason)
        })
    }

    /// The options' arch, else the one `machine_type` belongs to, else the host's.
    fn guest_arch(&self, machine_type: Option<&str>) -> Result<GuestArch, KataError> {
        if let Some(arch) = self.options.arch {
            return Ok(arch);
        }
        let inferred = match machine_type {
            Some("virt") => Some(GuestArch::Aarch64),
            Some("q35" | "pc" | "pc-lite" | "microvm") => Some(GuestArch::X86_64),
            Some("pseries") => Some(GuestArch::Ppc64le),
            Some("s390-ccw-virtio") => Some(GuestArch::S390x),
            _ => None,
        };
        match inferred.or_else(crate::native::native_arch) {
            Some(arch) => Ok(arch),
            None => Err(crate::Error::NoNativeArch {
                host: std::env::consts::ARCH,
            }
            .into()),
        }
    }

    /// The backend's vCPU limit (it may depend on the machine's options, e.g. the GIC).
    fn backend_max_vcpus(&self, arch: GuestArch, h: &HypervisorConfig) -> Result<u32, KataError> {
        let backend = crate::backend(arch, h).map_err(|e| match e {
            crate::Error::Arch { field, source } => {
                let key = field.rsplit('.').next().unwrap_or(field);
                let key = if key == "machine_type" || key == "machine_accelerators" {
                    key
                } else {
                    return KataError::Vm(crate::Error::Arch { field, source });
                };
                self.q
                    .invalid(key, format!("{:?}", self.q.str(key)), source.to_string())
            }
            other => KataError::Vm(other),
        })?;
        Ok(backend.max_vcpus())
    }

    /// `default_vcpus` and `default_maxvcpus` (see the [module docs](self)).
    fn vcpus(
        &self,
        h: &mut HypervisorConfig,
        host_cpus: u32,
        arch_max: u32,
    ) -> Result<(), KataError> {
        let q = self.q;
        let max = clamp_max_vcpus(u32_of(q.int("default_maxvcpus")), host_cpus, arch_max);
        let requested = q.number("default_vcpus");
        if requested.is_nan() {
            return Err(q.invalid("default_vcpus", "nan", "not a number of vCPUs"));
        }
        h.num_vcpus = clamp_vcpus(requested, host_cpus.min(arch_max)).min(max);
        h.default_max_vcpus = max;
        Ok(())
    }

    /// Memory sizes; returns the `maxmem` ceiling (`default_maxmemory`, clamped).
    fn memory(&mut self, h: &mut HypervisorConfig, host_memory_mb: u64) -> u64 {
        let q = self.q;
        let memory = u64::try_from(q.int("default_memory")).unwrap_or(0);
        h.memory_mb = if memory < MIN_MEMORY_MB {
            if memory != 0 {
                self.warnings.push(q.warning(
                    "default_memory",
                    WarningKind::Adjusted {
                        reason: format!(
                            "{memory} MiB is below Kata's minimum of {MIN_MEMORY_MB} MiB: \
                             {DEFAULT_MEMORY_MB} MiB, as Kata does"
                        ),
                    },
                ));
            }
            DEFAULT_MEMORY_MB
        } else {
            memory
        };
        h.memory_slots = match u32_of(q.int("memory_slots")) {
            0 => DEFAULT_MEMORY_SLOTS,
            n => n,
        };
        h.memory_offset_mb = u64::try_from(q.int("memory_offset")).unwrap_or(0);
        h.mem_prealloc = q.bool("enable_mem_prealloc");
        h.hugepages = q.bool("enable_hugepages");
        h.file_backed_mem_root = q.non_empty("file_mem_backend").map(PathBuf::from);
        h.enable_swap = q.bool("enable_swap");
        h.enable_vhost_user_store = q.bool("enable_vhost_user_store");
        match u64::try_from(q.int("default_maxmemory")).unwrap_or(0) {
            0 => host_memory_mb,
            n => n.min(host_memory_mb),
        }
    }

    /// Bridges, root ports, IOMMU, entropy, vhost-net.
    fn devices(&self, h: &mut HypervisorConfig) {
        let q = self.q;
        h.default_bridges = match u32_of(q.int("default_bridges")) {
            0 => 1,
            n => n.min(MAX_PCI_BRIDGES),
        };
        h.pcie_root_ports = u32_of(q.int("pcie_root_port")).min(MAX_PCIE_ROOT_PORTS);
        h.iommu = q.bool("enable_iommu");
        h.disable_vhost_net = q.bool("disable_vhost_net");
        h.entropy_source = PathBuf::from(q.non_empty("entropy_source").unwrap_or("/dev/urandom"));
    }

    /// `disable_image_nvdimm`, and where Kata forces it.
    fn nvdimm(&mut self, h: &mut HypervisorConfig, arch: GuestArch) {
        h.disable_nvdimm = self.q.bool("disable_image_nvdimm");
        if h.disable_nvdimm || h.image_path.is_none() {
            return;
        }
        let why = if h.machine_type.as_deref() == Some(MICROVM) {
            Some("microvm has no NVDIMM")
        } else if arch == GuestArch::Aarch64 && h.firmware_path.is_none() && h.pflashes.is_empty() {
            Some("on arm64 an NVDIMM needs ACPI, which only `firmware` or `pflashes` give")
        } else {
            None
        };
        if let Some(why) = why {
            h.disable_nvdimm = true;
            self.warnings.push(self.q.warning(
                "disable_image_nvdimm",
                WarningKind::Adjusted {
                    reason: format!("true, as Kata sets it: {why}; the image is a virtio-blk disk"),
                },
            ));
        }
    }

    /// `block_device_driver`, `block_device_aio`, `enable_iothreads`.
    fn block(&mut self, h: &mut HypervisorConfig) -> Result<(), KataError> {
        let q = self.q;
        h.block_device_driver = match q.str("block_device_driver") {
            "" | "virtio-scsi" => BlockDriver::VirtioScsi,
            "virtio-blk" => BlockDriver::VirtioBlk,
            "virtio-blk-ccw" => BlockDriver::VirtioBlkCcw,
            "nvdimm" => BlockDriver::Nvdimm,
            "virtio-mmio" => {
                return Err(q.invalid(
                    "block_device_driver",
                    "\"virtio-mmio\"",
                    "QEMU has no virtio-blk-mmio driver in Kata (Firecracker's)",
                ))
            }
            other => {
                return Err(q.invalid(
                    "block_device_driver",
                    format!("{other:?}"),
                    "Kata knows virtio-scsi, virtio-blk, virtio-blk-ccw and nvdimm",
                ))
            }
        };
        match q.str("block_device_aio") {
            "" | "threads" => {}
            "native" | "io_uring" => self.warnings.push(q.warning(
                "block_device_aio",
                WarningKind::NotHonoured {
                    reason: "hvarch attaches disks with aio=threads",
                },
            )),
            other => {
                return Err(q.invalid(
                    "block_device_aio",
                    format!("{other:?}"),
                    "Kata knows threads, native and io_uring",
                ))
            }
        }
        h.enable_iothreads = q.bool("enable_iothreads");
        Ok(())
    }

    /// `shared_fs` and the virtio-fs daemon's settings.
    fn shared_fs(&mut self, h: &mut HypervisorConfig) -> Result<(), KataError> {
        let q = self.q;
        h.shared_fs = match q.str("shared_fs") {
            "" | "virtio-fs" => SharedFs::VirtioFs,
            "virtio-9p" => SharedFs::VirtioFs9p,
            "virtio-fs-nydus" => {
                self.warnings.push(q.warning(
                    "shared_fs",
                    WarningKind::NotHonoured {
                        reason: "nydusd is not modelled: hvarch starts `virtio_fs_daemon` with \
                                 virtiofsd's arguments (the VM's devices are the same)",
                    },
                ));
                SharedFs::VirtioFs
            }
            "none" => SharedFs::None,
            other => {
                return Err(q.invalid(
                    "shared_fs",
                    format!("{other:?}"),
                    "Kata knows virtio-fs, virtio-9p, virtio-fs-nydus and none",
                ))
            }
        };
        if h.shared_fs == SharedFs::VirtioFs && h.virtio_fs_daemon.is_none() {
            return Err(KataError::Invalid {
                key: q.full("virtio_fs_daemon"),
                line: q.line("virtio_fs_daemon"),
                value: "\"\"".into(),
                reason: "Kata cannot enable virtio-fs without a daemon path (or set `shared_fs`)"
                    .into(),
            });
        }
        h.virtio_fs_cache = match q.str("virtio_fs_cache") {
            "" | "auto" => VirtioFsCache::Auto,
            "always" => VirtioFsCache::Always,
            "never" => VirtioFsCache::Never,
            "metadata" => VirtioFsCache::Metadata,
            "none" => {
                self.warnings.push(q.warning(
                    "virtio_fs_cache",
                    WarningKind::Adjusted {
                        reason: "Kata 1.x's `none` is virtiofsd's `never`".into(),
                    },
                ));
                VirtioFsCache::Never
            }
            other => {
                return Err(q.invalid(
                    "virtio_fs_cache",
                    format!("{other:?}"),
                    "Kata knows auto, always, never and metadata",
                ))
            }
        };
        h.virtio_fs_inode_file_handles = match q.str("virtio_fs_inode_file_handles") {
            "" => None,
            "never" => Some(InodeFileHandles::Never),
            "prefer" => Some(InodeFileHandles::Prefer),
            "mandatory" => Some(InodeFileHandles::Mandatory),
            other => {
                return Err(q.invalid(
                    "virtio_fs_inode_file_handles",
                    format!("{other:?}"),
                    "Kata knows never, prefer and mandatory",
                ))
            }
        };
        h.virtio_fs_extra_args = q.list("virtio_fs_extra_args").to_vec();
        h.virtio_fs_queue_size = match q.int("virtio_fs_queue_size") {
            0 => None,
            n => Some(
                u16::try_from(n)
                    .ok()
                    .filter(|n| n.is_power_of_two() && *n <= 1024)
                    .ok_or_else(|| {
                        q.invalid("virtio_fs_queue_size", n, "a power of two up to 1024")
                    })?,
            ),
        };
        if q.int("virtio_fs_cache_size") != 0 {
            self.warnings.push(q.warning(
                "virtio_fs_cache_size",
                WarningKind::NotHonoured {
                    reason: "QEMU's vhost-user-fs has no DAX window (`cache-size`)",
                },
            ));
        }
        Ok(())
    }

    /// `hot_plug_vfio` and `cold_plug_vfio`: checked as Kata checks them.
    fn vfio_ports(&mut self) -> Result<(), KataError> {
        let q = self.q;
        let mut set = Vec::new();
        for key in ["hot_plug_vfio", "cold_plug_vfio"] {
            match q.str(key) {
                "" | "no-port" => {}
                "bridge-port" | "root-port" | "switch-port" => set.push(key),
                other => {
                    return Err(q.invalid(
                        key,
                        format!("{other:?}"),
                        "Kata knows no-port, bridge-port, root-port and switch-port",
                    ))
                }
            }
        }
        if set.len() == 2 {
            return Err(q.invalid(
                "cold_plug_vfio",
                format!("{:?}", q.str("cold_plug_vfio")),
                "only one of `hot_plug_vfio` and `cold_plug_vfio` can name a port",
            ));
        }
        for key in set {
            self.warnings.push(q.warning(
                key,
                WarningKind::NotHonoured {
                    reason: "hvarch's hotplug places VFIO devices by its own rules (bridge \
                             slots, then root ports)",
                },
            ));
        }
        Ok(())
    }

    /// The kernel command line Kata's `SetKernelParams` builds from the file (see the
    /// [module docs](self)); the backend's own parameters come before it at assembly.
    fn kernel_params(&self, h: &HypervisorConfig) -> Result<KernelParams, KataError> {
        let mut params = KernelParams::new();
        let mut push = |key: &str, value: Option<&str>| {
            params
                .push(key, value)
                .map(|_| ())
                .map_err(|e| self.q.invalid("kernel_params", key, e.to_string()))
        };
        if h.image_path.is_some() {
            for (key, value) in SYSTEMD_PARAMS {
                push(key, Some(value))?;
            }
        }
        if h.block_device_driver == BlockDriver::VirtioScsi {
            push("scsi_mod.scan", Some("none"))?;
        }
        let agent = self.agent;
        if agent.bool("enable_debug") {
            push("agent.log", Some("debug"))?;
        }
        if agent.bool("enable_tracing") {
            push("agent.trace", Some("true"))?;
        }
        if agent.bool("debug_console_enabled") {
            push("agent.debug_console", None)?;
            push("agent.debug_console_vport", Some(DEBUG_CONSOLE_VPORT))?;
        }
        let cdh = agent.int("cdh_api_timeout");
        if cdh > 0 {
            push("agent.cdh_api_timeout", Some(&cdh.to_string()))?;
        }
        let user = self.q.str("kernel_params");
        let user: KernelParams =
            user.parse()
                .map_err(|e: hvarch_devices::kernel_params::KernelParamError| {
                    self.q
                        .invalid("kernel_params", format!("{user:?}"), e.to_string())
                })?;
        params.extend(&user);
        Ok(params)
    }

    /// vsock (a context id given, or Kata 1.x's `use_vsock`) or the virtio-serial channel.
    fn agent_transport(&self, spec: &mut VmSpec) -> Result<(), KataError> {
        match (self.options.vsock_cid, self.q.bool("use_vsock")) {
            (Some(cid), _) => {
                spec.use_vsock = true;
                spec.vsock_cid = Some(cid);
                Ok(())
            }
            (None, true) => Err(self.q.invalid(
                "use_vsock",
                "true",
                "the guest's vsock context id is not in the file: set KataOptions::vsock_cid",
            )),
            (None, false) => Ok(()),
        }
    }
}

/// A comma-separated list as Kata normalizes it: items trimmed, empty ones dropped.
fn comma_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A `u32` key's value (its range was checked with its type).
fn u32_of(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Kata's `defaultMaxVCPUs`: 0 or at least the host's CPUs is the host's CPUs, never above
/// the backend's limit.
pub fn clamp_max_vcpus(requested: u32, host_cpus: u32, arch_max: u32) -> u32 {
    let max = if requested == 0 || requested >= host_cpus {
        host_cpus
    } else {
        requested
    };
    max.min(arch_max).max(1)
}

/// Kata's `defaultVCPUs` (and its rounding up of fractions): 0 is 1, negative or above
/// `available` (the host's CPUs, capped by the backend) is `available`.
pub fn clamp_vcpus(requested: f64, available: u32) -> u32 {
    let available = available.max(1);
    if requested < 0.0 || requested > f64::from(available) {
        available
    } else if requested == 0.0 {
        1
    } else {
        // In 0 < requested <= available (a u32): the cast cannot overflow.
        requested.ceil() as u32
    }
}

/// A `-sandbox` value (`on[,obsolete=deny][,elevateprivileges=deny][,spawn=deny]
/// [,resourcecontrol=deny]`, `allow` for the default, or `off`) as hvarch's [`Sandbox`]; `off`
/// is none.
pub fn parse_sandbox(value: &str) -> Result<Option<Sandbox>, String> {
    let mut parts = value.split(',').map(str::trim);
    match parts.next() {
        Some("off") if parts.clone().next().is_none() => return Ok(None),
        Some("on") => {}
        _ => return Err("must start with `on` (or be `off`)".into()),
    }
    let mut sandbox = Sandbox::default();
    for part in parts {
        let (key, action) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not `<filter>=deny|allow`"))?;
        let flag = match key {
            "obsolete" => &mut sandbox.deny_obsolete,
            "elevateprivileges" => &mut sandbox.deny_elevate_privileges,
            "spawn" => &mut sandbox.deny_spawn,
            "resourcecontrol" => &mut sandbox.deny_resource_control,
            _ => {
                return Err(format!(
                    "unknown filter `{key}` (obsolete, elevateprivileges, spawn, resourcecontrol)"
                ))
            }
        };
        *flag = match action {
            "deny" => true,
            "allow" => false,
            _ => return Err(format!("`{part}`: hvarch models deny and allow only")),
        };
    }
    Ok(Some(sandbox))
}

#[cfg(test)]
mod tests;
