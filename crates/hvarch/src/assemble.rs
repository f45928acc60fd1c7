//! Turning a [`VmSpec`] into a QEMU configuration the way Kata's `createSandbox` does
//! (kata-go.md §2.8 and §4.2), with the arch backend doing every arch-specific step.
//!
//! # Nesting
//!
//! Kata's `setup()` rule: when the host is itself a VM (`host_nested`, else Kata's
//! `RunningOnVMM`: the `hypervisor` flag of `/proc/cpuinfo` on x86_64 hosts, never elsewhere)
//! and `hypervisor.disable_nesting_checks` is not set, virtio-pci devices get
//! `disable-modern=on`. hvarch applies it under KVM only: under TCG QEMU emulates the
//! devices itself and nothing runs nested.
//!
//! # What is assembled, in order
//!
//! - `-name sandbox-<id>`, `-uuid`, `-machine` (the backend's machine, options and
//!   `machine_accelerators`), `-cpu` (the backend's model and `cpu_features`);
//! - the QMP monitor on `<runtime_dir>/qmp.sock`;
//! - `-m` from the backend's memory topology (ceiling: host memory + offset, plus 1 GiB on
//!   x86_64 and ppc64le; none on s390x), with guest RAM on a backend `dimm1` (RAM, hugepages,
//!   or file-backed and shared for virtio-fs and templates) on a NUMA node, or as the
//!   machine's `memory-backend` where the machine has no NUMA (`microvm`, `s390-ccw-virtio`);
//! - devices: bridges, console (`<runtime_dir>/console.sock`), the rootfs image (NVDIMM or
//!   virtio-blk), the vIOMMU, the virtio-scsi controller (its I/O thread just before it),
//!   `rng0` on the entropy source, PCIe root ports; then the cold-plugged resources:
//!   volumes (9p, or with virtio-fs a `vhost-user-fs` device `vhost-user-fs<n>` on
//!   `<runtime_dir>/vhost-fs-<n>.sock`, whose daemon [`Assembled::virtiofs`] describes), the
//!   agent channel (`channel0` / `charch0` / `agent.channel.0` on
//!   `<runtime_dir>/kata.sock`) *or* vsock, network endpoints, block drives, VFIO devices;
//!   then `extra_devices`; then the backend places what it numbers itself (s390x: the CCW
//!   device numbers, in this order);
//! - `-rtc base=utc,clock=host`, with `driftfix=slew` on x86_64 only, and
//!   `-global kvm-pit.lost_tick_policy=discard` on x86_64 only (Kata emitted both on every
//!   arch; both are x86 features: qemu-system-aarch64 warns "driftfix 'slew' is not
//!   available with this machine" and "global kvm-pit.lost_tick_policy has invalid class
//!   name"); pflash (the UEFI code image read-only when there are two), `-vga none`;
//! - knobs: `-no-user-config -nodefaults -nographic -no-reboot`, `-no-shutdown` and
//!   `-daemonize` when asked, `-overcommit mem-lock=on` unless `enable_swap`, `-S` when
//!   `stopped`, `-sandbox` when `seccomp_sandbox` is set;
//! - `-kernel`, `-initrd`, `-append` (the backend's parameters, then `panic=1`,
//!   `nr_cpus=<max vCPUs>`, `agent.use_vsock=<bool>`, then the user's `kernel_params`, which
//!   win in the guest), `-bios`;
//! - `-pidfile <runtime_dir>/pid`, `-D <runtime_dir>/qemu.log` in debug, `-smp` last.

use std::path::{Path, PathBuf};

use hvarch_amd64::Amd64;
use hvarch_arch::arch::QemuArch;
use hvarch_arch::guest_arch::GuestArch;
use hvarch_arch::machine;
use hvarch_arch::resources::{RngDev, Socket, VSock, VhostUserDevice, VhostUserKind};
use hvarch_arch::settings::{
    BlockDriver, HypervisorConfig, SharedFs, TemplateRole, MAX_PCI_BRIDGES,
};
use hvarch_arch::ArchError;
use hvarch_arm64::Arm64;
use hvarch_devices::argv::Argv;
use hvarch_devices::config::{
    Accelerator, Global, Incoming, Kernel, Knobs, Monitor, MonitorEndpoint, Pflash, RamAttach, Rtc,
    VmConfig,
};
use hvarch_devices::fd::FdTable;
use hvarch_devices::kernel_params::KernelParams;
use hvarch_devices::memory::MemoryBackend;
use hvarch_devices::part::Syntax;
use hvarch_devices::vhost_user::VhostUserKind as DeviceVhostUserKind;
use hvarch_devices::Device;
use hvarch_ppc64le::Ppc64le;
use hvarch_s390x::S390x;

use crate::error::{Error, Result};
use crate::host;
use crate::spec::{check_id, VmSpec};
use crate::virtiofs::VirtiofsShare;

/// The most PCIe root ports a spec may ask for (Kata 2.x's `maxPCIeRootPort`).
pub const MAX_PCIE_ROOT_PORTS: u32 = 16;
/// The largest memory size, offset or host memory accepted, in MiB (1 PiB): far beyond any
/// guest, and small enough that every sum the backends compute fits in bytes.
pub const MAX_MEMORY_MB: u64 = 1 << 30;
/// The id of the guest RAM backend (govmm's `dimm1`).
pub const RAM_BACKEND_ID: &str = "dimm1";
/// The id of the QMP monitor's chardev.
pub const QMP_MONITOR_ID: &str = "qmp";
/// The agent channel's port id, chardev id and guest-visible name (Kata's).
pub const AGENT_CHANNEL: (&str, &str, &str) = ("channel0", "charch0", "agent.channel.0");

/// The runtime files of a VM, all inside its runtime directory. These are the names hvarch
/// (or QEMU, for it) creates there: in a directory hvarch did not create, a file already
/// present under one of them is refused, never replaced (see [`crate::runtime_dir`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimePaths {
    /// The directory.
    pub dir: PathBuf,
    /// The console socket (`console.sock`).
    pub console: PathBuf,
    /// The QMP socket (`qmp.sock`).
    pub qmp: PathBuf,
    /// The agent channel socket (`kata.sock`).
    pub agent: PathBuf,
    /// QEMU's pid file (`pid`).
    pub pidfile: PathBuf,
    /// QEMU's debug log (`qemu.log`).
    pub log: PathBuf,
    /// QEMU's standard error (`qemu.stderr`).
    pub stderr: PathBuf,
    /// The lock file holding the directory for one VM (`hvarch.lock`).
    pub lock: PathBuf,
}

impl RuntimePaths {
    /// The files inside `dir`.
    pub fn new(dir: &Path) -> Self {
        RuntimePaths {
            dir: dir.to_path_buf(),
            console: dir.join("console.sock"),
            qmp: dir.join("qmp.sock"),
            agent: dir.join("kata.sock"),
            pidfile: dir.join("pid"),
            log: dir.join("qemu.log"),
            stderr: dir.join("qemu.stderr"),
            lock: dir.join(crate::runtime_dir::LOCK_FILE),
        }
    }

    /// The files hvarch or QEMU create (every path but the directory and the lock file).
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        [
            &self.qmp,
            &self.stderr,
            &self.console,
            &self.agent,
            &self.pidfile,
            &self.log,
        ]
        .into_iter()
        .map(PathBuf::as_path)
    }

    /// The vhost-user socket of the `index`th virtio-fs share (`vhost-fs-<index>.sock`).
    pub fn virtiofs_socket(&self, index: usize) -> PathBuf {
        self.dir.join(format!("vhost-fs-{index}.sock"))
    }

    /// Where the `index`th virtio-fs daemon's stderr goes (`virtiofsd-<index>.stderr`).
    pub fn virtiofs_stderr(&self, index: usize) -> PathBuf {
        self.dir.join(format!("virtiofsd-{index}.stderr"))
    }
}

/// The arch backend for `arch`, configured by `config`.
///
/// ```
/// use hvarch::{backend, GuestArch};
/// let arch = backend(GuestArch::Aarch64, &Default::default()).unwrap();
/// assert_eq!(arch.machine().unwrap().machine_type, "virt");
/// let arch = backend(GuestArch::S390x, &Default::default()).unwrap();
/// assert_eq!(arch.machine().unwrap().machine_type, "s390-ccw-virtio");
/// ```
pub fn backend(arch: GuestArch, config: &HypervisorConfig) -> Result<Box<dyn QemuArch>> {
    let wrap = |e: ArchError| {
        let field = match e {
            ArchError::UnsupportedMachine { .. } => "hypervisor.machine_type",
            ArchError::Device(_) => "hypervisor.machine_accelerators",
            _ => "hypervisor",
        };
        Error::Arch { field, source: e }
    };
    match arch {
        GuestArch::Aarch64 => Ok(Box::new(Arm64::new(config).map_err(wrap)?)),
        GuestArch::X86_64 => Ok(Box::new(Amd64::new(config).map_err(wrap)?)),
        GuestArch::Ppc64le => Ok(Box::new(Ppc64le::new(config).map_err(wrap)?)),
        GuestArch::S390x => Ok(Box::new(S390x::new(config).map_err(wrap)?)),
        // GuestArch is non-exhaustive: an architecture added later has no backend yet.
        other => Err(Error::NoBackend { arch: other }),
    }
}

/// A VM ready to launch: QEMU's configuration, its binary, and the backend that built it
/// (which keeps the bridge slot state hotplug needs).
#[derive(Debug)]
pub struct Assembled {
    /// The guest architecture.
    pub guest_arch: GuestArch,
    /// The QEMU binary (configured `hypervisor_path`, else the backend's default).
    pub qemu_path: PathBuf,
    /// The whole QEMU configuration.
    pub config: VmConfig,
    /// The runtime files.
    pub paths: RuntimePaths,
    /// The vCPU ceiling (`maxcpus`, `nr_cpus`).
    pub max_vcpus: u32,
    /// The virtio-fs shares, whose daemons the launcher starts (empty unless `shared_fs`
    /// is virtio-fs and there are volumes).
    pub virtiofs: Vec<VirtiofsShare>,
    /// The backend, after assembly (bridges placed).
    pub arch: Box<dyn QemuArch>,
}

impl Assembled {
    /// QEMU's arguments without the binary; descriptors are numbered through `fds`, which
    /// the launcher must map into the child.
    pub fn args(&self, syntax: Syntax, fds: &mut FdTable) -> Result<Vec<String>> {
        self.args_buffer(syntax, fds).map(Argv::into_vec)
    }

    /// [`Assembled::args`] in one buffer ([`Argv`]), as the launcher renders them: what
    /// [`Command::args`](std::process::Command::args) takes, without a `String` per argument.
    pub fn args_buffer(&self, syntax: Syntax, fds: &mut FdTable) -> Result<Argv> {
        self.config
            .to_argv(syntax, fds)
            .map_err(Error::device("vm"))
    }

    /// The whole command line, binary first (descriptor numbers as a launcher would assign
    /// them; use [`Assembled::args`] to keep the table).
    pub fn argv(&self, syntax: Syntax) -> Result<Vec<String>> {
        let mut argv = vec![self.qemu_path.to_string_lossy().into_owned()];
        argv.extend(self.args(syntax, &mut FdTable::new())?);
        Ok(argv)
    }
}

/// Assembles `spec` (see the [module docs](self) for what and in which order).
///
/// ```
/// let mut spec = hvarch::VmSpec::kata_default();
/// spec.arch = Some(hvarch::GuestArch::Aarch64);
/// spec.host_memory_mb = Some(8192);
/// spec.host_cpus = Some(4);
/// let vm = hvarch::assemble(&spec).unwrap();
/// let argv = vm.argv(hvarch::Syntax::Options).unwrap();
/// assert_eq!(argv[0], "/usr/bin/qemu-system-aarch64");
/// assert!(argv.contains(&"virt,accel=kvm,usb=off,gic-version=host".to_string()));
/// ```
pub fn assemble(spec: &VmSpec) -> Result<Assembled> {
    check_id(&spec.id)?;
    let config = &spec.hypervisor;
    check_numbers(spec)?;
    let guest_arch = spec.guest_arch()?;
    let kernel_path = config.kernel_path.clone().ok_or(Error::Missing {
        field: "hypervisor.kernel_path",
        reason: "the VM boots a kernel directly",
    })?;
    match (&config.image_path, &config.initrd_path) {
        (Some(_), Some(_)) => {
            return Err(Error::Conflict {
                field: "hypervisor.image_path",
                other: "hypervisor.initrd_path",
            })
        }
        (None, None) => {
            return Err(Error::Missing {
                field: "hypervisor.initrd_path",
                reason: "set an initrd or a rootfs image (hypervisor.image_path)",
            })
        }
        _ => {}
    }
    check_sharing(spec)?;
    let paths = RuntimePaths::new(&spec.runtime_dir());

    // setup(): the backend, nesting, vhost-net, its bridges.
    let mut arch = backend(guest_arch, config)?;
    if nested(spec)? {
        arch.enable_nesting_checks();
    } else {
        arch.disable_nesting_checks();
    }
    if config.disable_vhost_net {
        arch.disable_vhost_net();
    } else {
        arch.enable_vhost_net();
    }
    arch.bridges(config.default_bridges);

    // Machine, CPU, topology, memory.
    let machine_spec = arch
        .machine()
        .map_err(Error::arch("hypervisor.machine_type"))?;
    let machine = machine_spec.to_machine(config.accelerator);
    let host_cpus = spec.host_cpus.unwrap_or_else(host::host_cpus);
    let max_vcpus = max_vcpus(config.default_max_vcpus, host_cpus, arch.max_vcpus());
    if config.num_vcpus > max_vcpus {
        return Err(Error::invalid(
            "hypervisor.num_vcpus",
            config.num_vcpus,
            format!(
                "more than the vCPU ceiling {max_vcpus} (default_max_vcpus, host_cpus and the \
                 {guest_arch} backend's limit {})",
                arch.max_vcpus()
            ),
        ));
    }
    let smp = arch.cpu_topology(config.num_vcpus, max_vcpus);
    let host_memory_mb = match spec.host_memory_mb {
        Some(mb) => mb,
        None => host::host_memory_mb()?,
    };
    if host_memory_mb < config.memory_mb {
        return Err(Error::invalid(
            "hypervisor.memory_mb",
            config.memory_mb,
            format!("more than the host memory ({host_memory_mb} MiB, host_memory_mb)"),
        ));
    }
    let mut memory = arch.memory_topology(config.memory_mb, host_memory_mb, config.memory_slots);
    memory.backend = Some(ram_backend(config, memory.size));
    if !machine::has_numa(&machine.machine_type) {
        memory.attach = RamAttach::MachineProperty;
    }
    let cpu = arch.cpu_model();

    // Kernel command line: arch → panic=1 → nr_cpus → agent.use_vsock → user.
    let params = kernel_params(arch.as_ref(), config, max_vcpus, spec.use_vsock)?;

    // Devices, in Kata's order.
    let devices = devices(arch.as_mut(), spec, &paths)?;
    let virtiofs = virtiofs_shares(spec, &paths);

    let pflash = arch.pflash().map_err(Error::arch("hypervisor.pflashes"))?;
    let pflash_count = pflash.len();
    let pflash = pflash
        .into_iter()
        .enumerate()
        .map(|(unit, file)| Pflash {
            file,
            readonly: unit == 0 && pflash_count == 2,
        })
        .collect();
    let qemu_path = arch
        .qemu_path()
        .map_err(Error::arch("hypervisor.hypervisor_path"))?;

    let mut vm = VmConfig::new(machine);
    vm.name = Some(format!("sandbox-{}", spec.id));
    vm.uuid = Some(spec.uuid());
    vm.cpu = Some(cpu);
    vm.smp = Some(smp);
    vm.memory = Some(memory);
    vm.monitors = vec![Monitor::qmp(
        QMP_MONITOR_ID,
        MonitorEndpoint::Path(paths.qmp.clone()),
    )];
    vm.devices = devices;
    let mut rtc = Rtc::kata();
    if guest_arch != GuestArch::X86_64 {
        // driftfix re-injects lost PIT/RTC ticks: an x86 feature (other machines warn).
        rtc.driftfix = None;
    }
    vm.rtc = Some(rtc);
    if guest_arch == GuestArch::X86_64 {
        vm.globals.push(Global {
            driver: "kvm-pit".into(),
            property: "lost_tick_policy".into(),
            value: "discard".into(),
        });
    }
    vm.pflash = pflash;
    vm.vga = Some("none".into());
    vm.knobs = Knobs {
        no_user_config: true,
        nodefaults: true,
        nographic: true,
        no_reboot: true,
        no_shutdown: spec.no_shutdown,
        daemonize: spec.daemonize,
        mem_lock: (!config.enable_swap).then_some(true),
        stopped: spec.stopped,
    };
    vm.kernel = Some(Kernel {
        path: kernel_path,
        initrd: config.initrd_path.clone(),
        params,
    });
    vm.bios = config.firmware_path.clone();
    if config.template == TemplateRole::BootFromTemplate {
        vm.incoming = Some(Incoming::Defer);
    }
    vm.sandbox = config.seccomp_sandbox;
    vm.pidfile = Some(paths.pidfile.clone());
    if config.debug {
        vm.log_file = Some(paths.log.clone());
    }
    vm.validate().map_err(Error::device("vm"))?;
    tracing::debug!(id = %spec.id, arch = %guest_arch, devices = vm.devices.len(), "assembled VM");
    Ok(Assembled {
        guest_arch,
        qemu_path,
        config: vm,
        paths,
        max_vcpus,
        virtiofs,
        arch,
    })
}

/// Kata's nesting rule (see the [module docs](self)): under KVM, a nested host and no
/// `disable_nesting_checks`.
fn nested(spec: &VmSpec) -> Result<bool> {
    let config = &spec.hypervisor;
    if config.accelerator != Accelerator::Kvm || config.disable_nesting_checks {
        return Ok(false);
    }
    match spec.host_nested {
        Some(nested) => Ok(nested),
        None => host::running_on_vmm(),
    }
}

/// Volumes need a sharing mechanism, virtio-fs a daemon, vhost-user storage hugepages
/// (Kata: "Vhost-user-blk/scsi is enabled without HugePages. This configuration will not
/// work").
fn check_sharing(spec: &VmSpec) -> Result<()> {
    let config = &spec.hypervisor;
    if !spec.volumes.is_empty() && config.shared_fs == SharedFs::None {
        return Err(Error::Conflict {
            field: "volumes",
            other: "hypervisor.shared_fs",
        });
    }
    if !spec.volumes.is_empty()
        && config.shared_fs == SharedFs::VirtioFs
        && config.virtio_fs_daemon.is_none()
    {
        return Err(Error::Missing {
            field: "hypervisor.virtio_fs_daemon",
            reason: "virtio-fs volumes are served by a daemon (e.g. virtiofsd)",
        });
    }
    if config.enable_vhost_user_store && !config.hugepages {
        return Err(Error::Missing {
            field: "hypervisor.hugepages",
            reason: "vhost-user storage (enable_vhost_user_store) needs hugepages",
        });
    }
    Ok(())
}

/// The virtio-fs share of each volume, in order (see [`crate::virtiofs`]).
fn virtiofs_shares(spec: &VmSpec, paths: &RuntimePaths) -> Vec<VirtiofsShare> {
    let config = &spec.hypervisor;
    let Some(daemon) = config
        .virtio_fs_daemon
        .as_ref()
        .filter(|_| config.shared_fs == SharedFs::VirtioFs)
    else {
        return Vec::new();
    };
    spec.volumes
        .iter()
        .enumerate()
        .map(|(index, volume)| VirtiofsShare {
            tag: volume.mount_tag.clone(),
            shared_dir: volume.host_path.clone(),
            socket: paths.virtiofs_socket(index),
            stderr: paths.virtiofs_stderr(index),
            daemon: daemon.clone(),
            cache: config.virtio_fs_cache,
            inode_file_handles: config.virtio_fs_inode_file_handles,
            extra_args: config.virtio_fs_extra_args.clone(),
        })
        .collect()
}

/// Refuses numbers no VM can have, before any backend arithmetic sees them.
fn check_numbers(spec: &VmSpec) -> Result<()> {
    let config = &spec.hypervisor;
    if config.num_vcpus == 0 {
        return Err(Error::invalid(
            "hypervisor.num_vcpus",
            0,
            "at least one vCPU is needed",
        ));
    }
    if config.memory_mb == 0 {
        return Err(Error::invalid(
            "hypervisor.memory_mb",
            0,
            "the guest needs RAM",
        ));
    }
    for (field, value) in [
        ("hypervisor.memory_mb", Some(config.memory_mb)),
        ("hypervisor.memory_offset_mb", Some(config.memory_offset_mb)),
        ("host_memory_mb", spec.host_memory_mb),
    ] {
        if let Some(v) = value.filter(|v| *v > MAX_MEMORY_MB) {
            return Err(Error::invalid(
                field,
                v,
                format!("at most {MAX_MEMORY_MB} MiB"),
            ));
        }
    }
    if spec.host_memory_mb == Some(0) {
        return Err(Error::invalid("host_memory_mb", 0, "must be at least 1"));
    }
    if spec.host_cpus == Some(0) {
        return Err(Error::invalid("host_cpus", 0, "must be at least 1"));
    }
    if config.default_bridges > MAX_PCI_BRIDGES {
        return Err(Error::invalid(
            "hypervisor.default_bridges",
            config.default_bridges,
            format!("at most {MAX_PCI_BRIDGES} bridges"),
        ));
    }
    if config.pcie_root_ports > MAX_PCIE_ROOT_PORTS {
        return Err(Error::invalid(
            "hypervisor.pcie_root_ports",
            config.pcie_root_ports,
            format!("at most {MAX_PCIE_ROOT_PORTS} root ports"),
        ));
    }
    if spec.use_vsock && spec.vsock_cid.is_none() {
        return Err(Error::Missing {
            field: "vsock_cid",
            reason: "use_vsock needs the guest's context id",
        });
    }
    if let Some(cid) = spec.vsock_cid.filter(|c| !(3..u32::MAX).contains(c)) {
        return Err(Error::invalid(
            "vsock_cid",
            cid,
            "guest context ids are 3 to 4294967294 (0-2 and 2^32-1 are reserved)",
        ));
    }
    Ok(())
}

/// Kata's vCPU ceiling (`defaultMaxVCPUs`): unset or at least the host's CPUs means the
/// host's CPUs; never above the backend's limit.
fn max_vcpus(requested: u32, host_cpus: u32, arch_max: u32) -> u32 {
    let max = if requested == 0 || requested >= host_cpus {
        host_cpus
    } else {
        requested
    };
    max.min(arch_max)
}

/// The guest RAM backend `dimm1`: hugepages, file-backed (virtio-fs and
/// `file_backed_mem_root`, in `/dev/shm` unless set), or anonymous RAM; shared where
/// vhost-user daemons or a template need to map it; preallocated with hugepages or
/// `mem_prealloc`.
fn ram_backend(config: &HypervisorConfig, size: u64) -> MemoryBackend {
    let file_root = config
        .file_backed_mem_root
        .clone()
        .or_else(|| (config.shared_fs == SharedFs::VirtioFs).then(|| PathBuf::from("/dev/shm")));
    let mut backend = if config.hugepages {
        MemoryBackend::hugepages(RAM_BACKEND_ID, size)
    } else if let Some(root) = &file_root {
        MemoryBackend::file(RAM_BACKEND_ID, size, root)
    } else {
        MemoryBackend::ram(RAM_BACKEND_ID, size)
    };
    let shared = file_root.is_some()
        || config.shared_fs == SharedFs::VirtioFs
        || config.enable_vhost_user_store
        || config.template == TemplateRole::BootToBeTemplate;
    if shared {
        backend.share = Some(true);
    }
    backend.prealloc = config.mem_prealloc || config.hugepages;
    backend
}

fn kernel_params(
    arch: &dyn QemuArch,
    config: &HypervisorConfig,
    max_vcpus: u32,
    use_vsock: bool,
) -> Result<KernelParams> {
    let mut params = arch.kernel_parameters(config.debug);
    let nr_cpus = max_vcpus.to_string();
    for (key, value) in [
        ("panic", "1"),
        ("nr_cpus", nr_cpus.as_str()),
        ("agent.use_vsock", if use_vsock { "true" } else { "false" }),
    ] {
        params
            .push(key, Some(value))
            .map_err(|e| Error::invalid("hypervisor.kernel_params", key, e.to_string()))?;
    }
    params.extend(&config.kernel_params);
    Ok(params)
}

/// A virtio-fs volume: a `vhost-user-fs` device `vhost-user-fs<index>` on the share's socket
/// (Kata's `appendVhostUserDevice` for a `types.Volume` under virtio-fs), with the
/// configured queue size.
fn append_virtiofs_volume(
    arch: &mut dyn QemuArch,
    devices: &mut Vec<Device>,
    config: &HypervisorConfig,
    paths: &RuntimePaths,
    index: usize,
    volume: &hvarch_arch::resources::Volume,
) -> Result<()> {
    let attrs = VhostUserDevice {
        kind: VhostUserKind::Fs,
        socket_path: paths.virtiofs_socket(index),
        dev_id: format!("fs{index}"),
        mac: None,
        tag: Some(volume.mount_tag.clone()),
    };
    let first_new = devices.len();
    arch.append_vhost_user_device(devices, &attrs)
        .map_err(Error::arch("volumes"))?;
    for device in &mut devices[first_new..] {
        if let Device::VhostUser(dev) = device {
            if let DeviceVhostUserKind::Fs { queue_size, .. } = &mut dev.kind {
                *queue_size = config.virtio_fs_queue_size;
            }
        }
    }
    Ok(())
}

/// Kata's `buildDevices`, the config-level devices, then the cold-plugged resources.
fn devices(arch: &mut dyn QemuArch, spec: &VmSpec, paths: &RuntimePaths) -> Result<Vec<Device>> {
    let config = &spec.hypervisor;
    let mut devices = Vec::new();
    arch.append_bridges(&mut devices)
        .map_err(Error::arch("hypervisor.default_bridges"))?;
    arch.append_console(&mut devices, &paths.console)
        .map_err(Error::arch("runtime_dir"))?;
    if let Some(image) = &config.image_path {
        arch.append_image(&mut devices, image)
            .map_err(Error::arch("hypervisor.image_path"))?;
    }
    if config.iommu {
        arch.append_iommu(&mut devices)
            .map_err(Error::arch("hypervisor.iommu"))?;
    }
    if config.block_device_driver == BlockDriver::VirtioScsi {
        let mut scsi = Vec::new();
        let iothread = arch
            .append_scsi_controller(&mut scsi, config.enable_iothreads)
            .map_err(Error::arch("hypervisor.enable_iothreads"))?;
        // The controller's I/O thread joins the VM, created before the controller uses it.
        devices.extend(iothread.map(Device::from));
        devices.extend(scsi);
    }
    arch.append_rng_device(
        &mut devices,
        &RngDev {
            id: "rng0".into(),
            filename: config.entropy_source.clone(),
        },
    )
    .map_err(Error::arch("hypervisor.entropy_source"))?;
    arch.append_pcie_root_ports(&mut devices, config.pcie_root_ports)
        .map_err(Error::arch("hypervisor.pcie_root_ports"))?;

    // Cold plug (Kata's addDevice, in the order the sandbox adds them).
    for (index, volume) in spec.volumes.iter().enumerate() {
        if config.shared_fs == SharedFs::VirtioFs {
            append_virtiofs_volume(arch, &mut devices, config, paths, index, volume)?;
        } else {
            arch.append_9p_volume(&mut devices, volume)
                .map_err(Error::arch("volumes"))?;
        }
    }
    if spec.use_vsock {
        let context_id = spec.vsock_cid.ok_or(Error::Missing {
            field: "vsock_cid",
            reason: "use_vsock needs the guest's context id",
        })?;
        let vsock = VSock {
            context_id,
            vhost_fd: spec.vsock_fd.clone(),
        };
        arch.append_vsock(&mut devices, &vsock)
            .map_err(Error::arch("vsock_cid"))?;
    } else {
        let (device_id, id, name) = AGENT_CHANNEL;
        let socket = Socket {
            device_id: device_id.into(),
            id: id.into(),
            host_path: paths.agent.clone(),
            name: name.into(),
        };
        arch.append_socket(&mut devices, &socket)
            .map_err(Error::arch("runtime_dir"))?;
    }
    for endpoint in &spec.networks {
        arch.append_network(&mut devices, endpoint)
            .map_err(Error::arch("networks"))?;
    }
    for drive in &spec.block_drives {
        arch.append_block_device(&mut devices, drive)
            .map_err(Error::arch("block_drives"))?;
    }
    for dev in &spec.vfio {
        arch.append_vfio_device(&mut devices, dev)
            .map_err(Error::arch("vfio"))?;
    }
    devices.extend(spec.extra_devices.iter().cloned());
    arch.place_devices(&mut devices)
        .map_err(Error::arch("extra_devices"))?;
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvarch_arch::resources::{BlockDrive, VfioDev, Volume};
    use hvarch_devices::config::Accelerator;
    use hvarch_devices::syntax::format_size;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    fn spec(arch: GuestArch, accel: Accelerator) -> VmSpec {
        let mut spec = VmSpec::kata_default();
        spec.id = "t1".into();
        spec.arch = Some(arch);
        spec.hypervisor.accelerator = accel;
        spec.host_memory_mb = Some(16384);
        spec.host_cpus = Some(4);
        spec.host_nested = Some(false);
        spec.runtime_dir = Some("/run/t".into());
        spec
    }

    fn argv_for(spec: &VmSpec) -> Vec<String> {
        assemble(spec).unwrap().argv(Syntax::Options).unwrap()
    }

    /// The value after the first `flag`.
    fn after(argv: &[String], flag: &str) -> String {
        let i = argv
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} missing"));
        argv[i + 1].clone()
    }

    /// The values of every `flag`, in order.
    fn all(argv: &[String], flag: &str) -> Vec<String> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    /// Device ids (`id=` of each `-device`), in order.
    fn device_ids(argv: &[String]) -> Vec<String> {
        all(argv, "-device")
            .iter()
            .filter_map(|d| {
                d.split(',')
                    .find_map(|p| p.strip_prefix("id="))
                    .map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn default_arm64_kvm() {
        let argv = argv_for(&spec(GuestArch::Aarch64, Accelerator::Kvm));
        assert_eq!(argv[0], "/usr/bin/qemu-system-aarch64");
        assert_eq!(argv[1..3], ["-name", "sandbox-t1"]);
        assert_eq!(argv[3], "-uuid");
        assert_eq!(
            after(&argv, "-machine"),
            "virt,accel=kvm,usb=off,gic-version=host"
        );
        assert_eq!(after(&argv, "-cpu"), "host");
        assert_eq!(
            after(&argv, "-chardev"),
            "socket,id=qmp,path=/run/t/qmp.sock,server=on,wait=off"
        );
        assert_eq!(after(&argv, "-m"), "2G,slots=10,maxmem=16G");
        assert_eq!(
            after(&argv, "-append"),
            "console=hvc0 console=hvc1 iommu.passthrough=0 quiet panic=1 nr_cpus=4 \
             agent.use_vsock=false"
        );
        assert_eq!(
            argv[argv.len() - 2..],
            ["-smp", "1,sockets=4,cores=1,threads=1,maxcpus=4"]
        );
        assert_eq!(
            device_ids(&argv),
            [
                "pci-bridge-0",
                "serial0",
                "console0",
                "scsi0",
                "rng0-dev",
                "channel0"
            ]
        );
        assert_eq!(
            after(&argv, "-rtc"),
            "base=utc,clock=host",
            "driftfix is x86-only"
        );
        assert!(
            all(&argv, "-global").is_empty(),
            "no kvm-pit global on arm64"
        );
        assert_eq!(after(&argv, "-vga"), "none");
        assert_eq!(after(&argv, "-overcommit"), "mem-lock=on");
        assert_eq!(after(&argv, "-pidfile"), "/run/t/pid");
        assert_eq!(after(&argv, "-initrd"), crate::spec::DEFAULT_INITRD,);
        for flag in ["-no-user-config", "-nodefaults", "-nographic", "-no-reboot"] {
            assert!(argv.iter().any(|a| a == flag), "{flag}");
        }
        for flag in [
            "-S",
            "-daemonize",
            "-no-shutdown",
            "-D",
            "-bios",
            "-incoming",
        ] {
            assert!(!argv.iter().any(|a| a == flag), "{flag}");
        }
        assert_eq!(
            all(&argv, "-object")[1],
            "memory-backend-ram,id=dimm1,size=2G"
        );
        assert_eq!(after(&argv, "-numa"), "node,memdev=dimm1");
    }

    #[test]
    fn default_arm64_tcg_and_knobs() {
        let mut spec = spec(GuestArch::Aarch64, Accelerator::Tcg);
        spec.stopped = true;
        spec.no_shutdown = true;
        spec.daemonize = true;
        spec.hypervisor.enable_swap = true;
        spec.hypervisor.debug = true;
        spec.hypervisor.cpu_features = vec!["pmu=off".into()];
        spec.hypervisor.default_max_vcpus = 2;
        spec.hypervisor.num_vcpus = 2;
        let argv = argv_for(&spec);
        assert_eq!(
            after(&argv, "-machine"),
            "virt,accel=tcg,usb=off,gic-version=3"
        );
        assert_eq!(after(&argv, "-cpu"), "max,pmu=off");
        assert_eq!(
            after(&argv, "-smp"),
            "2,sockets=2,cores=1,threads=1,maxcpus=2"
        );
        assert!(after(&argv, "-append").ends_with("debug panic=1 nr_cpus=2 agent.use_vsock=false"));
        for flag in ["-S", "-daemonize", "-no-shutdown"] {
            assert!(argv.iter().any(|a| a == flag), "{flag}");
        }
        assert!(!argv.iter().any(|a| a == "-overcommit"));
        assert_eq!(after(&argv, "-D"), "/run/t/qemu.log");
    }

    #[test]
    fn default_amd64_q35() {
        let argv = argv_for(&spec(GuestArch::X86_64, Accelerator::Kvm));
        assert_eq!(argv[0], "/usr/bin/qemu-system-x86_64");
        assert_eq!(after(&argv, "-machine"), "q35,accel=kvm,kernel_irqchip=on");
        assert_eq!(after(&argv, "-cpu"), "host");
        assert_eq!(after(&argv, "-m"), "2G,slots=10,maxmem=17G");
        assert_eq!(
            all(&argv, "-global"),
            ["driver=kvm-pit,property=lost_tick_policy,value=discard"]
        );
        assert_eq!(after(&argv, "-rtc"), "base=utc,driftfix=slew,clock=host");
        let append = after(&argv, "-append");
        assert!(
            append.starts_with("tsc=reliable no_timer_check"),
            "{append}"
        );
        assert!(append.ends_with("iommu=off quiet panic=1 nr_cpus=4 agent.use_vsock=false"));
        let tcg = argv_of(GuestArch::X86_64, Accelerator::Tcg);
        assert_eq!(after(&tcg, "-machine"), "q35,accel=tcg");
        assert_eq!(after(&tcg, "-cpu"), "max");
    }

    #[test]
    fn default_ppc64le_pseries() {
        let argv = argv_of(GuestArch::Ppc64le, Accelerator::Kvm);
        assert_eq!(argv[0], "/usr/bin/qemu-system-ppc64");
        assert_eq!(after(&argv, "-machine"), "pseries,accel=kvm,usb=off");
        assert_eq!(after(&argv, "-cpu"), "host");
        // 16384 MiB host memory is 256 MiB-aligned already; + 1024 for the NVDIMM image.
        assert_eq!(after(&argv, "-m"), "2G,slots=10,maxmem=17G");
        assert_eq!(after(&argv, "-numa"), "node,memdev=dimm1");
        assert_eq!(after(&argv, "-rtc"), "base=utc,clock=host");
        assert!(all(&argv, "-global").is_empty());
        assert_eq!(
            after(&argv, "-append"),
            "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 noreplace-smp reboot=k \
             console=hvc0 console=hvc1 cryptomgr.notests net.ifnames=0 quiet panic=1 nr_cpus=4 \
             agent.use_vsock=false"
        );
        assert_eq!(
            all(&argv, "-device")[..2],
            [
                "pci-bridge,bus=pci.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=02",
                "virtio-serial-pci,id=serial0,max_ports=2",
            ]
        );
        let tcg = argv_of(GuestArch::Ppc64le, Accelerator::Tcg);
        assert_eq!(
            after(&tcg, "-machine"),
            "pseries,accel=tcg,usb=off,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,\
             cap-ccf-assist=off"
        );
        assert_eq!(after(&tcg, "-cpu"), "max");
    }

    #[test]
    fn default_s390x_on_ccw() {
        let argv = argv_of(GuestArch::S390x, Accelerator::Tcg);
        assert_eq!(argv[0], "/usr/bin/qemu-system-s390x");
        // No NUMA on s390x: guest RAM is the machine's memory backend; no hotplug room.
        assert_eq!(
            after(&argv, "-machine"),
            "s390-ccw-virtio,accel=tcg,memory-backend=dimm1"
        );
        assert!(!argv.iter().any(|a| a == "-numa"));
        assert_eq!(after(&argv, "-m"), "2G");
        assert_eq!(after(&argv, "-rtc"), "base=utc,clock=host");
        assert_eq!(
            after(&argv, "-append"),
            "console=ttysclp0 quiet panic=1 nr_cpus=4 agent.use_vsock=false"
        );
        // Every virtio device on CCW, numbered in order; the CCW bridge is no device.
        assert_eq!(
            all(&argv, "-device"),
            [
                "virtio-serial-ccw,id=serial0,devno=fe.0.0001",
                "virtconsole,chardev=charconsole0,id=console0",
                "virtio-scsi-ccw,id=scsi0,devno=fe.0.0002",
                "virtio-rng-ccw,id=rng0-dev,rng=rng0,devno=fe.0.0003",
                "virtserialport,chardev=charch0,id=channel0,name=agent.channel.0",
            ]
        );
        let vm = assemble(&spec(GuestArch::S390x, Accelerator::Tcg)).unwrap();
        let bridge = vm.arch.get_bridges().iter().next().unwrap();
        assert_eq!(bridge.id, "ccw-bridge-0");
        assert_eq!(bridge.devices.len(), 3);
    }

    #[test]
    fn nesting_rule() {
        let serial = |spec: &VmSpec| {
            all(&argv_for(spec), "-device")
                .into_iter()
                .find(|d| d.starts_with("virtio-serial"))
                .unwrap()
        };
        let mut nested = spec(GuestArch::X86_64, Accelerator::Kvm);
        nested.host_nested = Some(true);
        assert_eq!(
            serial(&nested),
            "virtio-serial-pci,id=serial0,max_ports=2,disable-modern=on"
        );
        // Every virtio-pci device, not only the console's.
        assert!(all(&argv_for(&nested), "-device")
            .iter()
            .filter(|d| d.starts_with("virtio-") && d.contains("-pci,"))
            .all(|d| d.contains("disable-modern=on")));
        let mut disabled = nested.clone();
        disabled.hypervisor.disable_nesting_checks = true;
        assert_eq!(
            serial(&disabled),
            "virtio-serial-pci,id=serial0,max_ports=2"
        );
        let mut tcg = nested.clone();
        tcg.hypervisor.accelerator = Accelerator::Tcg;
        assert_eq!(serial(&tcg), "virtio-serial-pci,id=serial0,max_ports=2");
        let not_nested = spec(GuestArch::X86_64, Accelerator::Kvm);
        assert_eq!(
            serial(&not_nested),
            "virtio-serial-pci,id=serial0,max_ports=2"
        );
        // CCW devices have no disable-modern: s390x is unaffected.
        let mut s390x = nested.clone();
        s390x.arch = Some(GuestArch::S390x);
        assert_eq!(
            serial(&s390x),
            "virtio-serial-ccw,id=serial0,devno=fe.0.0001"
        );
        // Unset: the host decides (Kata's RunningOnVMM).
        let mut host = nested;
        host.host_nested = None;
        let expected = if crate::host::running_on_vmm().unwrap() {
            "virtio-serial-pci,id=serial0,max_ports=2,disable-modern=on"
        } else {
            "virtio-serial-pci,id=serial0,max_ports=2"
        };
        assert_eq!(serial(&host), expected);
    }

    fn argv_of(arch: GuestArch, accel: Accelerator) -> Vec<String> {
        argv_for(&spec(arch, accel))
    }

    #[test]
    fn user_kernel_params_come_last_and_max_vcpus_rules() {
        let mut spec = spec(GuestArch::Aarch64, Accelerator::Tcg);
        spec.hypervisor.kernel_params = "foo=foo bar=bar panic=0".parse().unwrap();
        spec.use_vsock = true;
        spec.vsock_cid = Some(3);
        spec.hypervisor.default_max_vcpus = 3;
        let argv = argv_for(&spec);
        assert!(after(&argv, "-append")
            .ends_with("quiet panic=1 nr_cpus=3 agent.use_vsock=true foo=foo bar=bar panic=0"));
        assert!(device_ids(&argv).contains(&"vsock-3".to_owned()));
        assert!(!device_ids(&argv).contains(&"channel0".to_owned()));
        // Kata's defaultMaxVCPUs: 0 or >= host CPUs -> host CPUs, capped by the backend.
        assert_eq!(max_vcpus(0, 8, 123), 8);
        assert_eq!(max_vcpus(16, 8, 123), 8);
        assert_eq!(max_vcpus(2, 8, 123), 2);
        assert_eq!(max_vcpus(0, 512, 123), 123);
    }

    /// Issue 10 §3: a user's parameter holding byte 0xA0 (`à` is C3 A0) stays one parameter
    /// in the guest, and a spec line Linux would split inside a character is refused, naming
    /// the parameter.
    #[test]
    fn user_kernel_params_cannot_smuggle_parameters() {
        let mut spec = spec(GuestArch::Aarch64, Accelerator::Tcg);
        spec.hypervisor
            .kernel_params
            .push("agent.log", Some("àinit=/bin/sh"))
            .unwrap();
        let argv = argv_for(&spec);
        let append = after(&argv, "-append");
        assert!(append.ends_with(" agent.log=\"àinit=/bin/sh\""), "{append}");
        let guest = KernelParams::parse(&append).unwrap();
        assert_eq!(
            guest.get("agent.log").unwrap().value(),
            Some("àinit=/bin/sh")
        );
        assert!(!guest.contains("init"));

        let err = toml::from_str::<VmSpec>(
            "id = \"a\"\n[hypervisor]\nkernel_params = \"agent.log=àinit=/bin/sh\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"agent.log="), "{err}");
        let err = toml::from_str::<VmSpec>(
            "id = \"a\"\n[hypervisor]\nkernel_params = 'agent.log=\"a\"b'\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"agent.log\""), "{err}");
    }

    #[test]
    fn initrd_vs_image() {
        let initrd = argv_of(GuestArch::Aarch64, Accelerator::Tcg);
        assert!(!after(&initrd, "-machine").contains("nvdimm"));

        let dir = std::env::temp_dir().join(format!("hvarch-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("rootfs.img");
        std::fs::write(&image, vec![0u8; 4 << 20]).unwrap();
        let mut spec = spec(GuestArch::Aarch64, Accelerator::Tcg);
        spec.hypervisor.initrd_path = None;
        spec.hypervisor.image_path = Some(image.clone());
        let argv = argv_for(&spec);
        assert_eq!(
            after(&argv, "-machine"),
            "virt,accel=tcg,usb=off,gic-version=3,nvdimm=on"
        );
        assert!(!argv.iter().any(|a| a == "-initrd"));
        assert!(after(&argv, "-append").contains(
            "iommu.passthrough=0 root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro \
             ro rootfstype=ext4 quiet systemd.show_status=false panic=1"
        ));
        let ids = device_ids(&argv);
        assert_eq!(ids[..4], ["pci-bridge-0", "serial0", "console0", "nv0"]);
        let mem0 = all(&argv, "-object")
            .into_iter()
            .find(|o| o.contains("id=mem0"))
            .unwrap();
        assert_eq!(
            mem0,
            format!(
                "memory-backend-file,id=mem0,size=4M,mem-path={}",
                image.display()
            )
        );

        // Without NVDIMM: a virtio-blk root and no nvdimm option.
        spec.hypervisor.disable_nvdimm = true;
        let argv = argv_for(&spec);
        assert!(!after(&argv, "-machine").contains("nvdimm"));
        assert!(after(&argv, "-append").contains("root=/dev/vda1"));

        // x86_64 q35 with an image: nvdimm too.
        spec.hypervisor.disable_nvdimm = false;
        spec.arch = Some(GuestArch::X86_64);
        let argv = argv_for(&spec);
        assert_eq!(after(&argv, "-machine"), "q35,accel=tcg,nvdimm=on");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn full_device_order() {
        let mut spec = spec(GuestArch::X86_64, Accelerator::Tcg);
        spec.hypervisor.default_bridges = 2;
        spec.hypervisor.pcie_root_ports = 2;
        spec.hypervisor.iommu = true;
        spec.hypervisor.enable_iothreads = true;
        spec.hypervisor.pflashes = vec!["/fw/CODE.fd".into(), "/fw/VARS.fd".into()];
        spec.hypervisor.firmware_path = Some("/fw/bios.bin".into());
        spec.volumes.push(Volume {
            mount_tag: "shared".into(),
            host_path: "/srv".into(),
        });
        spec.block_drives.push(BlockDrive {
            file: "/img/disk.qcow2".into(),
            format: "qcow2".into(),
            id: "drive0".into(),
            read_only: false,
            share_rw: false,
            index: 0,
        });
        spec.vfio.push(VfioDev {
            id: "vfio0".into(),
            bdf: "0000:02:00.0".into(),
            vendor_id: None,
            device_id: None,
            bus: Some("rp0".into()),
        });
        spec.extra_devices
            .push(hvarch_devices::balloon::BalloonDevice::new("balloon0").into());
        let argv = argv_for(&spec);
        assert_eq!(
            device_ids(&argv),
            [
                "pci-bridge-0",
                "pci-bridge-1",
                "serial0",
                "console0",
                "scsi0",
                "rng0-dev",
                "rp0",
                "rp1",
                "extra-9p-shared-dev",
                "channel0",
                "drive0",
                "vfio0",
                "balloon0",
            ]
        );
        assert!(all(&argv, "-device")
            .iter()
            .any(|d| d.starts_with("intel-iommu")));
        assert!(all(&argv, "-object").contains(&"iothread,id=iothread-scsi0".to_owned()));
        assert_eq!(
            all(&argv, "-drive"),
            [
                "if=pflash,format=raw,unit=0,file=/fw/CODE.fd,readonly=on",
                "if=pflash,format=raw,unit=1,file=/fw/VARS.fd",
            ]
        );
        assert_eq!(after(&argv, "-bios"), "/fw/bios.bin");
        assert!(after(&argv, "-append").contains("intel_iommu=on iommu=pt"));
    }

    #[test]
    fn virtio_fs_volumes_are_vhost_user_fs_devices_with_daemons() {
        use hvarch_arch::settings::{InodeFileHandles, VirtioFsCache};
        let mut spec = spec(GuestArch::Aarch64, Accelerator::Tcg);
        let h = &mut spec.hypervisor;
        h.shared_fs = SharedFs::VirtioFs;
        h.virtio_fs_daemon = Some("/usr/libexec/virtiofsd".into());
        h.virtio_fs_queue_size = Some(1024);
        h.virtio_fs_cache = VirtioFsCache::Never;
        h.virtio_fs_inode_file_handles = Some(InodeFileHandles::Never);
        h.virtio_fs_extra_args = vec!["--thread-pool-size=1".into()];
        for (tag, dir) in [("kataShared", "/srv/a"), ("data", "/srv/b")] {
            spec.volumes.push(Volume {
                mount_tag: tag.into(),
                host_path: dir.into(),
            });
        }
        let vm = assemble(&spec).unwrap();
        let argv = vm.argv(Syntax::Options).unwrap();
        let ids = device_ids(&argv);
        let channel = ids.iter().position(|id| id == "channel0").unwrap();
        assert_eq!(
            ids[channel - 2..channel],
            ["vhost-user-fs0", "vhost-user-fs1"]
        );
        let devices = all(&argv, "-device");
        assert!(devices.contains(
            &"vhost-user-fs-pci,id=vhost-user-fs0,chardev=char-fs0,tag=kataShared,queue-size=1024"
                .to_owned()
        ));
        assert!(all(&argv, "-chardev")
            .contains(&"socket,id=char-fs1,path=/run/t/vhost-fs-1.sock".to_owned()));
        // The daemons map guest RAM: a shared file backend.
        assert_eq!(
            all(&argv, "-object")[1],
            "memory-backend-file,id=dimm1,size=2G,mem-path=/dev/shm,share=on"
        );
        assert_eq!(vm.virtiofs.len(), 2);
        assert_eq!(
            vm.virtiofs[1],
            VirtiofsShare {
                tag: "data".into(),
                shared_dir: "/srv/b".into(),
                socket: "/run/t/vhost-fs-1.sock".into(),
                stderr: "/run/t/virtiofsd-1.stderr".into(),
                daemon: "/usr/libexec/virtiofsd".into(),
                cache: VirtioFsCache::Never,
                inode_file_handles: Some(InodeFileHandles::Never),
                extra_args: vec!["--thread-pool-size=1".into()],
            }
        );
        // With 9p, the same volumes are 9p devices and there is no daemon.
        spec.hypervisor.shared_fs = SharedFs::VirtioFs9p;
        let vm = assemble(&spec).unwrap();
        assert!(vm.virtiofs.is_empty());
        assert!(device_ids(&vm.argv(Syntax::Options).unwrap())
            .contains(&"extra-9p-data-dev".to_owned()));
    }

    #[test]
    fn sharing_and_storage_rules() {
        let volume = Volume {
            mount_tag: "t".into(),
            host_path: "/srv".into(),
        };
        let mut none = spec(GuestArch::Aarch64, Accelerator::Tcg);
        none.hypervisor.shared_fs = SharedFs::None;
        none.volumes.push(volume.clone());
        assert_eq!(
            assemble(&none).map(|_| ()).unwrap_err(),
            Error::Conflict {
                field: "volumes",
                other: "hypervisor.shared_fs"
            }
        );
        let mut no_daemon = none.clone();
        no_daemon.hypervisor.shared_fs = SharedFs::VirtioFs;
        let err = assemble(&no_daemon).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.starts_with("`hypervisor.virtio_fs_daemon` is required"),
            "{err}"
        );
        // Without volumes virtio-fs needs no daemon (only the shared RAM).
        no_daemon.volumes.clear();
        assert!(assemble(&no_daemon).unwrap().virtiofs.is_empty());

        let mut store = spec(GuestArch::X86_64, Accelerator::Tcg);
        store.hypervisor.enable_vhost_user_store = true;
        let err = assemble(&store).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.starts_with("`hypervisor.hugepages` is required"),
            "{err}"
        );
        store.hypervisor.hugepages = true;
        let argv = argv_for(&store);
        let ram = all(&argv, "-object")
            .into_iter()
            .find(|o| o.contains("id=dimm1"))
            .unwrap();
        assert!(
            ram.contains("share=on") && ram.contains("hugepages"),
            "{ram}"
        );
    }

    #[test]
    fn seccomp_sandbox() {
        let mut spec = spec(GuestArch::Aarch64, Accelerator::Tcg);
        assert!(!argv_for(&spec).iter().any(|a| a == "-sandbox"));
        spec.hypervisor.seccomp_sandbox = Some(hvarch_devices::config::Sandbox {
            deny_obsolete: true,
            deny_spawn: true,
            ..Default::default()
        });
        assert_eq!(
            after(&argv_for(&spec), "-sandbox"),
            "on,obsolete=deny,spawn=deny"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let base = || spec(GuestArch::Aarch64, Accelerator::Tcg);
        type Change = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|s| s.hypervisor.kernel_path = None),
                "`hypervisor.kernel_path`",
            ),
            (
                Box::new(|s| s.hypervisor.initrd_path = None),
                "`hypervisor.initrd_path`",
            ),
            (
                Box::new(|s| s.hypervisor.image_path = Some("/x".into())),
                "`hypervisor.image_path` cannot be combined with `hypervisor.initrd_path`",
            ),
            (
                Box::new(|s| s.hypervisor.num_vcpus = 0),
                "`hypervisor.num_vcpus`",
            ),
            (
                Box::new(|s| s.hypervisor.num_vcpus = 5),
                "`hypervisor.num_vcpus`",
            ),
            (
                Box::new(|s| s.hypervisor.memory_mb = 1 << 20),
                "`hypervisor.memory_mb`",
            ),
            (
                Box::new(|s| s.hypervisor.default_bridges = 6),
                "`hypervisor.default_bridges`",
            ),
            (
                Box::new(|s| s.hypervisor.pcie_root_ports = 17),
                "`hypervisor.pcie_root_ports`",
            ),
            (
                Box::new(|s| s.hypervisor.iommu = true),
                "`hypervisor.iommu`: Arm64",
            ),
            (
                Box::new(|s| s.hypervisor.pflashes = vec!["/a".into()]),
                "`hypervisor.pflashes`: two pflash images needed for arm64",
            ),
            (
                Box::new(|s| s.hypervisor.machine_type = Some("q35".into())),
                "`hypervisor.machine_type`",
            ),
            (
                Box::new(|s| s.hypervisor.machine_accelerators = "bad key=1".into()),
                "`hypervisor.machine_accelerators`",
            ),
            (Box::new(|s| s.id = "a/b".into()), "`id`"),
            (Box::new(|s| s.use_vsock = true), "`vsock_cid`"),
            (
                Box::new(|s| {
                    s.use_vsock = true;
                    s.vsock_cid = Some(2);
                }),
                "`vsock_cid`: invalid value \"2\"",
            ),
            (
                Box::new(|s| {
                    s.arch = Some(GuestArch::S390x);
                    s.hypervisor.iommu = true;
                }),
                "`hypervisor.iommu`: S390x does not support appending a vIOMMU",
            ),
            (
                Box::new(|s| {
                    s.arch = Some(GuestArch::Ppc64le);
                    s.hypervisor.pcie_root_ports = 1;
                }),
                "`hypervisor.pcie_root_ports`",
            ),
            (
                Box::new(|s| {
                    s.arch = Some(GuestArch::S390x);
                    let mut clash = hvarch_devices::balloon::BalloonDevice::new("balloon0");
                    clash.virtio = hvarch_devices::transport::VirtioOpts {
                        devno: Some("fe.0.0001".into()),
                        ..hvarch_devices::transport::VirtioOpts::on(
                            hvarch_devices::transport::Transport::Ccw,
                        )
                    };
                    let mut other = clash.clone();
                    other.id = "balloon1".into();
                    s.extra_devices = vec![clash.into(), other.into()];
                }),
                "`extra_devices`: Unable to plug device balloon1 into slot 1",
            ),
            (
                Box::new(|s| s.hypervisor.image_path = Some("/nonexistent.img".into())),
                "`hypervisor.image_path`",
            ),
            (Box::new(|s| s.uuid = Some("nope".into())), "uuid"),
        ];
        for (i, (change, expected)) in cases.iter().enumerate() {
            let mut spec = base();
            change(&mut spec);
            if expected.contains("nonexistent") || *expected == "`hypervisor.image_path`" {
                spec.hypervisor.initrd_path = None;
            }
            let err = assemble(&spec).map(|_| ()).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "case {i}: {err:?} lacks {expected:?}"
            );
        }
        for arch in GuestArch::ALL {
            let backend = backend(arch, &HypervisorConfig::default()).expect("every arch");
            assert_eq!(backend.guest_arch(), arch);
        }
    }

    /// Sets the spec's on/off switches from the first 11 of `flags` (debug, no NVDIMM, no
    /// vhost-net, vIOMMU, I/O threads, hugepages, prealloc, swap, no nesting checks,
    /// virtio-blk, vsock).
    fn set_switches(spec: &mut VmSpec, flags: &[bool]) {
        let h = &mut spec.hypervisor;
        h.debug = flags[0];
        h.disable_nvdimm = flags[1];
        h.disable_vhost_net = flags[2];
        h.iommu = flags[3];
        h.enable_iothreads = flags[4];
        h.hugepages = flags[5];
        h.mem_prealloc = flags[6];
        h.enable_swap = flags[7];
        h.disable_nesting_checks = flags[8];
        if flags[9] {
            h.block_device_driver = hvarch_arch::settings::BlockDriver::VirtioBlk;
        }
        spec.use_vsock = flags[10];
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_numbers_never_panic(
            arch in proptest::sample::select(GuestArch::ALL.to_vec()),
            tcg in any::<bool>(),
            num_vcpus in any::<u32>(),
            default_max_vcpus in any::<u32>(),
            memory_mb in any::<u64>(),
            memory_slots in any::<u32>(),
            memory_offset_mb in any::<u64>(),
            default_bridges in 0u32..64,
            pcie_root_ports in prop_oneof![0u32..40, any::<u32>()],
            host_memory_mb in proptest::option::of(any::<u64>()),
            host_cpus in proptest::option::of(any::<u32>()),
            flags in proptest::collection::vec(any::<bool>(), 13),
            machine in prop_oneof![Just(None), Just(Some("q35")), Just(Some("pc")), Just(Some("microvm")), Just(Some("virt")), Just(Some("pseries")), Just(Some("s390-ccw-virtio"))],
        ) {
            let mut spec = spec(arch, if tcg { Accelerator::Tcg } else { Accelerator::Kvm });
            let h = &mut spec.hypervisor;
            h.num_vcpus = num_vcpus;
            h.default_max_vcpus = default_max_vcpus;
            h.memory_mb = memory_mb;
            h.memory_slots = memory_slots;
            h.memory_offset_mb = memory_offset_mb;
            h.default_bridges = default_bridges;
            h.pcie_root_ports = pcie_root_ports;
            h.machine_type = machine.map(str::to_owned);
            set_switches(&mut spec, &flags);
            spec.vsock_cid = flags[11].then_some(num_vcpus);
            spec.host_nested = Some(flags[12]);
            spec.host_memory_mb = host_memory_mb;
            spec.host_cpus = host_cpus;
            match assemble(&spec) {
                Ok(vm) => {
                    let argv = vm.argv(Syntax::Options);
                    prop_assert!(argv.is_ok(), "{:?}", argv);
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    /// The spec fields a test spec breaks a rule of, as [`assemble`] documents its rules,
    /// written out again independently (whatever the order they are checked in).
    fn broken_rules(spec: &VmSpec) -> Vec<&'static str> {
        let h = &spec.hypervisor;
        let arch = spec.arch.unwrap_or(GuestArch::Aarch64);
        let mut broken = Vec::new();
        let mut rule = |broken_if: bool, field| {
            if broken_if {
                broken.push(field);
            }
        };
        rule(h.num_vcpus == 0, "hypervisor.num_vcpus");
        rule(
            !(1..=MAX_MEMORY_MB).contains(&h.memory_mb),
            "hypervisor.memory_mb",
        );
        rule(
            h.memory_offset_mb > MAX_MEMORY_MB,
            "hypervisor.memory_offset_mb",
        );
        let host_memory = spec.host_memory_mb.unwrap_or(u64::MAX);
        rule(
            !(1..=MAX_MEMORY_MB).contains(&host_memory),
            "host_memory_mb",
        );
        rule(host_memory < h.memory_mb, "hypervisor.memory_mb");
        rule(spec.host_cpus == Some(0), "host_cpus");
        rule(
            h.default_bridges > MAX_PCI_BRIDGES,
            "hypervisor.default_bridges",
        );
        rule(
            h.pcie_root_ports > MAX_PCIE_ROOT_PORTS,
            "hypervisor.pcie_root_ports",
        );
        let cid_ok = spec.vsock_cid.map(|c| (3..u32::MAX).contains(&c));
        rule(
            cid_ok == Some(false) || (spec.use_vsock && cid_ok.is_none()),
            "vsock_cid",
        );
        let machine = h.machine_type.as_deref();
        let machine_ok = match arch {
            GuestArch::Aarch64 => matches!(machine, None | Some("virt")),
            _ => true,
        };
        rule(!machine_ok, "hypervisor.machine_type");
        // x86_64 knows `virt` but not the QEMU binary for it.
        rule(
            arch == GuestArch::X86_64 && machine == Some("virt"),
            "hypervisor.hypervisor_path",
        );
        let pcie = matches!(
            (arch, machine),
            (GuestArch::Aarch64, _) | (_, None | Some("q35") | Some("virt"))
        );
        rule(h.pcie_root_ports > 0 && !pcie, "hypervisor.pcie_root_ports");
        let q35 = arch == GuestArch::X86_64 && matches!(machine, None | Some("q35"));
        rule(h.iommu && !q35, "hypervisor.iommu");
        if let (Ok(backend), Some(cpus)) = (backend(arch, h), spec.host_cpus) {
            let requested = h.default_max_vcpus;
            let ceiling = if requested == 0 || requested >= cpus {
                cpus
            } else {
                requested
            };
            rule(
                h.num_vcpus > ceiling.min(backend.max_vcpus()),
                "hypervisor.num_vcpus",
            );
        }
        broken
    }

    /// The value of parameter `key` on the kernel command line of `argv`.
    fn kernel_param(argv: &[String], key: &str) -> Option<String> {
        let params = KernelParams::parse(&after(argv, "-append")).ok()?;
        params.get(key)?.value().map(str::to_owned)
    }

    /// A spec of `arch` with numbers and switches mostly in range, sometimes not.
    fn arb_spec() -> impl Strategy<Value = VmSpec> {
        let arch = prop_oneof![Just(GuestArch::Aarch64), Just(GuestArch::X86_64)];
        let cpus = (
            prop_oneof![20 => 1u32..=4, 1 => Just(0), 1 => any::<u32>()],
            prop_oneof![20 => 0u32..=32, 1 => any::<u32>()],
            prop_oneof![20 => 4u32..=64, 1 => Just(0), 1 => any::<u32>()],
        );
        let memory = (
            prop_oneof![20 => 1u64..=8192, 1 => Just(0), 1 => any::<u64>()],
            prop_oneof![20 => 0u32..=16, 1 => any::<u32>()],
            prop_oneof![20 => 0u64..=4096, 1 => any::<u64>()],
            prop_oneof![20 => 8192u64..=65536, 1 => Just(0), 1 => any::<u64>()],
        );
        let pci = (
            prop_oneof![20 => 0..=MAX_PCI_BRIDGES, 1 => any::<u32>()],
            prop_oneof![20 => 0..=MAX_PCIE_ROOT_PORTS, 1 => any::<u32>()],
            prop_oneof![
                20 => Just(None),
                1 => prop::sample::select(vec!["q35", "pc", "microvm", "virt"]).prop_map(Some),
            ],
        );
        let vsock_cid = proptest::option::of(prop_oneof![20 => 3u32..1000, 1 => any::<u32>()]);
        let flags = proptest::collection::vec(prop::bool::weighted(0.1), 11);
        (arch, any::<bool>(), cpus, memory, pci, vsock_cid, flags).prop_map(
            |(arch, tcg, cpus, memory, pci, vsock_cid, flags)| {
                let mut spec = spec(
                    arch,
                    if tcg {
                        Accelerator::Tcg
                    } else {
                        Accelerator::Kvm
                    },
                );
                let h = &mut spec.hypervisor;
                (h.num_vcpus, h.default_max_vcpus, spec.host_cpus) = (cpus.0, cpus.1, Some(cpus.2));
                (h.memory_mb, h.memory_slots, h.memory_offset_mb) = (memory.0, memory.1, memory.2);
                spec.host_memory_mb = Some(memory.3);
                (h.default_bridges, h.pcie_root_ports) = (pci.0, pci.1);
                h.machine_type = pci.2.map(str::to_owned);
                set_switches(&mut spec, &flags);
                spec.vsock_cid = vsock_cid;
                spec
            },
        )
    }

    /// Numbers from a spec reach the argv exactly as the spec asks (vCPUs and their ceiling,
    /// memory, slots and its ceiling, root ports, vsock), or the spec is refused with an error
    /// naming a field whose rule it breaks. Most cases assemble (counted), so the properties
    /// of a successful assembly are checked, not skipped.
    fn check_spec_numbers(spec: &VmSpec) -> Result<bool, TestCaseError> {
        let broken = broken_rules(spec);
        let vm = match assemble(spec) {
            Ok(vm) => vm,
            Err(e) => {
                let message = e.to_string();
                prop_assert!(
                    broken
                        .iter()
                        .any(|field| message.contains(&format!("`{field}`"))),
                    "{} names none of the broken rules {:?}",
                    message,
                    broken
                );
                return Ok(false);
            }
        };
        prop_assert!(
            broken.is_empty(),
            "assembled although {:?} are broken",
            broken
        );
        let h = &spec.hypervisor;
        let (vcpus, slots) = (h.num_vcpus, h.memory_slots);
        let argv = vm.argv(Syntax::Options)?;
        prop_assert!(vm.argv(Syntax::Json).is_ok());
        let ceiling = vm.max_vcpus;
        prop_assert!(ceiling >= vcpus && Some(ceiling) <= spec.host_cpus);
        prop_assert_eq!(
            after(&argv, "-smp"),
            format!("{vcpus},sockets={ceiling},cores=1,threads=1,maxcpus={ceiling}")
        );
        let reserve = if vm.guest_arch == GuestArch::X86_64 {
            1024
        } else {
            0
        };
        let maxmem = spec.host_memory_mb.unwrap_or_default() + h.memory_offset_mb + reserve;
        prop_assert_eq!(
            after(&argv, "-m"),
            format!(
                "{},slots={slots},maxmem={}",
                format_size(h.memory_mb << 20),
                format_size(maxmem << 20)
            )
        );
        prop_assert_eq!(kernel_param(&argv, "nr_cpus"), Some(ceiling.to_string()));
        prop_assert_eq!(
            kernel_param(&argv, "agent.use_vsock"),
            Some(spec.use_vsock.to_string())
        );
        let devices = all(&argv, "-device");
        let ports = devices
            .iter()
            .filter(|d| d.starts_with("pcie-root-port,"))
            .count();
        prop_assert_eq!(ports, h.pcie_root_ports as usize);
        let vsock = devices.iter().find(|d| d.starts_with("vhost-vsock"));
        match (spec.use_vsock, spec.vsock_cid) {
            (true, Some(cid)) => prop_assert!(
                vsock.is_some_and(|d| d.contains(&format!(",guest-cid={cid}"))),
                "{:?}",
                vsock
            ),
            _ => prop_assert_eq!(vsock, None),
        }
        Ok(true)
    }

    #[test]
    fn spec_numbers_reach_the_argv_or_name_the_field() {
        let config = ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        let assembled = std::cell::Cell::new((0u32, 0u32));
        let result = proptest::test_runner::TestRunner::new(config).run(&arb_spec(), |spec| {
            let ok = check_spec_numbers(&spec)?;
            let (yes, no) = assembled.get();
            assembled.set(if ok { (yes + 1, no) } else { (yes, no + 1) });
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        let (yes, no) = assembled.get();
        assert!(
            yes * 10 >= (yes + no) * 3,
            "only {yes} of {} specs assembled",
            yes + no
        );
        assert!(no > 0, "no spec was refused");
    }
}
