//! [`VmConfig`]: a whole QEMU virtual machine (govmm's `Config`), rendered to one argv.
//!
//! # Argument order
//!
//! Arguments come out in govmm's order, which is the order Kata's logs and tests show:
//!
//! 1. `-name`, `-uuid`, `-machine`, `-cpu`
//! 2. QMP and monitor sockets (`-chardev socket,…` + `-mon chardev=…,mode=control`)
//! 3. `-m`
//! 4. the devices, in list order, each device's parts in creation order (backends first)
//! 5. `-rtc`, `-global`, pflash drives, `-vga`
//! 6. knobs: `-no-user-config`, `-nodefaults`, `-nographic`, `-no-reboot`, `-no-shutdown`,
//!    `-daemonize`, then the guest RAM backend (`-object memory-backend-…` + `-numa node,memdev=`
//!    or `-machine memory-backend=`), `-overcommit mem-lock=`, `-S`
//! 7. `-kernel`, `-initrd`, `-append`, `-bios`
//! 8. `-incoming`, `-pidfile`, `-D`, `-sandbox`
//! 9. `-smp`, last (as govmm does)
//!
//! QEMU itself does not depend on this order: it creates objects, backends and devices in its
//! own phases. The order exists so that output is stable and easy to compare.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::argv::Argv;
use crate::device::{Device, QemuDevice};
use crate::error::{invalid, Error, Result};
use crate::fd::{FdArg, FdResolver, FdTable};
use crate::id::check_id;
use crate::kernel_params::KernelParams;
use crate::memory::MemoryBackend;
use crate::part::{Part, PartKind, Syntax};
use crate::props::{Props, Value};
use crate::syntax::{parse_options, render_options, write_options, write_size};
use crate::transport::path_str;

/// The accelerator QEMU runs the guest with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// Linux KVM: production.
    Kvm,
    /// QEMU's Tiny Code Generator: emulation, for CI and cross-arch guests.
    Tcg,
}

impl Accelerator {
    /// QEMU's name for it (`kvm`, `tcg`).
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

/// Extra `-machine` properties, in order (`usb=off,gic-version=host`).
///
/// In spec files they are written in QEMU's option syntax as one string, as Kata's
/// `machine_accelerators` setting is; each value is escaped again when rendered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineOptions(Vec<(String, String)>);

impl MachineOptions {
    /// No options.
    pub fn new() -> Self {
        MachineOptions(Vec::new())
    }

    /// Parses `key=value,…` (QEMU option syntax). Every entry must have a key.
    pub fn parse(text: &str) -> Result<Self> {
        let pairs = parse_options(text, None)
            .map_err(|e| invalid("machine", "options", text, e.to_string()))?;
        let mut options = MachineOptions::new();
        for (key, value) in pairs {
            options.set(&key, &value)?;
        }
        Ok(options)
    }

    /// Sets `key` to `value`, replacing an earlier value of the same key in place.
    pub fn set(&mut self, key: &str, value: &str) -> Result<&mut Self> {
        check_option_key("machine", "options", key)?;
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.0.push((key.to_owned(), value.to_owned())),
        }
        Ok(self)
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let index = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(index).1)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The options in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn props(&self) -> Props<'_> {
        self.iter().collect()
    }
}

impl Serialize for MachineOptions {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let text = render_options("machine", None, &self.props(), &mut crate::fd::NoFds)
            .map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for MachineOptions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        MachineOptions::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn check_option_key(what: &'static str, field: &'static str, key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            what,
            field,
            key,
            "property names are ASCII letters, digits, '-', '_' and '.'",
        ))
    }
}

/// `-machine <type>,accel=<accel>,<options>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// The machine type: `virt`, `q35`, `pc`, `microvm`, …
    #[serde(rename = "type")]
    pub machine_type: String,
    /// The accelerator (omitted: QEMU's default).
    #[serde(default)]
    pub accel: Option<Accelerator>,
    /// Further machine properties.
    #[serde(default, skip_serializing_if = "MachineOptions::is_empty")]
    pub options: MachineOptions,
}

impl Machine {
    /// Machine `machine_type` with accelerator `accel` and no options.
    pub fn new(machine_type: impl Into<String>, accel: Accelerator) -> Self {
        Machine {
            machine_type: machine_type.into(),
            accel: Some(accel),
            options: MachineOptions::new(),
        }
    }

    fn validate(&self) -> Result<()> {
        check_option_key("machine", "type", &self.machine_type)?;
        if self.options.get("accel").is_some() && self.accel.is_some() {
            return Err(Error::Conflict {
                what: "machine",
                field: "accel",
                other: "options.accel",
            });
        }
        Ok(())
    }

    fn props(&self) -> Props<'_> {
        Props::new()
            .opt("accel", self.accel.map(Accelerator::as_str))
            .extend(self.options.props())
    }
}

/// `-cpu <model>,<features>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    /// The CPU model: `host` (KVM), `max`, `cortex-a57`, …
    pub model: String,
    /// CPU features in order, each `name=value` (`pmu=off`) or `+flag`/`-flag` (`-vmx`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl Cpu {
    /// The model without features.
    pub fn model(model: impl Into<String>) -> Self {
        Cpu {
            model: model.into(),
            features: Vec::new(),
        }
    }

    fn validate(&self) -> Result<()> {
        check_option_key("cpu", "model", &self.model)?;
        for feature in &self.features {
            let name = feature
                .strip_prefix(['+', '-'])
                .unwrap_or(feature)
                .split_once('=')
                .map_or(feature.as_str(), |(k, _)| k);
            let name = name.strip_prefix(['+', '-']).unwrap_or(name);
            check_option_key("cpu", "features", name)?;
            if feature.contains(',') {
                return Err(invalid("cpu", "features", feature, "one feature per entry"));
            }
        }
        Ok(())
    }

    fn write(&self, out: &mut String) {
        out.push_str(&self.model);
        for feature in &self.features {
            out.push(',');
            out.push_str(feature);
        }
    }
}

/// `-smp`: the vCPU topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smp {
    /// vCPUs present at boot (at least 1).
    pub cpus: u32,
    /// Sockets.
    #[serde(default)]
    pub sockets: Option<u32>,
    /// Dies per socket.
    #[serde(default)]
    pub dies: Option<u32>,
    /// Cores per die.
    #[serde(default)]
    pub cores: Option<u32>,
    /// Threads per core.
    #[serde(default)]
    pub threads: Option<u32>,
    /// The most vCPUs the guest can have (hotplug limit); at least `cpus`.
    #[serde(default)]
    pub maxcpus: Option<u32>,
}

impl Smp {
    /// `cpus` vCPUs with QEMU's default topology.
    pub fn cpus(cpus: u32) -> Self {
        Smp {
            cpus,
            sockets: None,
            dies: None,
            cores: None,
            threads: None,
            maxcpus: None,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.cpus == 0 {
            return Err(invalid("smp", "cpus", 0, "at least one vCPU is needed"));
        }
        let max = self.maxcpus.unwrap_or(self.cpus);
        if max < self.cpus {
            return Err(invalid(
                "smp",
                "maxcpus",
                max,
                format!("must be at least cpus ({})", self.cpus),
            ));
        }
        for (field, v) in [
            ("sockets", self.sockets),
            ("dies", self.dies),
            ("cores", self.cores),
            ("threads", self.threads),
        ] {
            if v == Some(0) {
                return Err(invalid("smp", field, 0, "must be at least 1"));
            }
        }
        if let (Some(s), Some(c), Some(t)) = (self.sockets, self.cores, self.threads) {
            let product =
                u64::from(s) * u64::from(self.dies.unwrap_or(1)) * u64::from(c) * u64::from(t);
            if product != u64::from(max) {
                return Err(invalid(
                    "smp",
                    "sockets",
                    s,
                    format!(
                        "sockets * dies * cores * threads = {product} must equal maxcpus ({max})"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn props(&self) -> Props<'_> {
        Props::new()
            .opt("sockets", self.sockets)
            .opt("dies", self.dies)
            .opt("cores", self.cores)
            .opt("threads", self.threads)
            .opt("maxcpus", self.maxcpus)
    }
}

/// How the guest RAM backend is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RamAttach {
    /// `-numa node,memdev=<id>` (govmm's way, where DIMMs are supported).
    #[default]
    NumaNode,
    /// `-machine memory-backend=<id>` (machines without NUMA, e.g. `microvm`).
    MachineProperty,
}

/// `-m` and the guest RAM backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    /// Boot RAM in bytes.
    pub size: u64,
    /// Memory hotplug slots (`slots=`); needs `maxmem`.
    #[serde(default)]
    pub slots: Option<u32>,
    /// The most RAM the guest can reach with hotplug, in bytes (`maxmem=`).
    #[serde(default)]
    pub maxmem: Option<u64>,
    /// A backend for boot RAM (hugepages, file-backed, shared, preallocated); its size must be
    /// `size`. Kata uses one so vhost-user and virtio-fs can map guest memory.
    #[serde(default)]
    pub backend: Option<MemoryBackend>,
    /// How the backend is attached.
    #[serde(default)]
    pub attach: RamAttach,
}

impl Memory {
    /// `size` bytes of RAM, no hotplug.
    pub fn size(size: u64) -> Self {
        Memory {
            size,
            slots: None,
            maxmem: None,
            backend: None,
            attach: RamAttach::NumaNode,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.size == 0 {
            return Err(invalid("memory", "size", 0, "the guest needs RAM"));
        }
        match (self.slots, self.maxmem) {
            (Some(_), None) => {
                return Err(Error::MissingField {
                    what: "memory",
                    field: "maxmem",
                })
            }
            (_, Some(max)) if max < self.size => {
                return Err(invalid(
                    "memory",
                    "maxmem",
                    max,
                    format!("must be at least size ({})", self.size),
                ))
            }
            _ => {}
        }
        if let Some(backend) = &self.backend {
            backend.validate()?;
            if backend.size != self.size {
                return Err(invalid(
                    "memory",
                    "backend.size",
                    backend.size,
                    format!("must equal memory.size ({})", self.size),
                ));
            }
        }
        Ok(())
    }
}

/// `-rtc base=…,clock=…,driftfix=…`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rtc {
    /// `utc`, `localtime`, or a start date such as `2006-06-17T16:01:21`.
    pub base: String,
    /// The clock source.
    #[serde(default)]
    pub clock: Option<RtcClock>,
    /// Lost-tick policy.
    #[serde(default)]
    pub driftfix: Option<RtcDriftFix>,
}

/// The RTC's clock source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtcClock {
    /// The host's system time.
    Host,
    /// The host's monotonic clock.
    Rt,
    /// The guest's virtual clock.
    Vm,
}

/// The RTC's drift fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtcDriftFix {
    /// Re-inject lost ticks.
    Slew,
    /// No fix.
    None,
}

impl Rtc {
    /// Kata's RTC: `base=utc,driftfix=slew,clock=host`.
    pub fn kata() -> Self {
        Rtc {
            base: "utc".into(),
            clock: Some(RtcClock::Host),
            driftfix: Some(RtcDriftFix::Slew),
        }
    }

    fn props(&self) -> Props<'_> {
        Props::new()
            .with("base", self.base.as_str())
            .opt(
                "driftfix",
                self.driftfix.map(|d| match d {
                    RtcDriftFix::Slew => "slew",
                    RtcDriftFix::None => "none",
                }),
            )
            .opt(
                "clock",
                self.clock.map(|c| match c {
                    RtcClock::Host => "host",
                    RtcClock::Rt => "rt",
                    RtcClock::Vm => "vm",
                }),
            )
    }
}

/// `-global driver=…,property=…,value=…`: a default for every instance of a driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Global {
    /// The driver, e.g. `kvm-pit`.
    pub driver: String,
    /// The property, e.g. `lost_tick_policy`.
    pub property: String,
    /// The value.
    pub value: String,
}

/// One pflash (firmware flash) image: `-drive if=pflash,format=raw,unit=<n>,file=…`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pflash {
    /// The image (e.g. `AAVMF_CODE.fd`, then a per-VM copy of `AAVMF_VARS.fd`).
    pub file: PathBuf,
    /// Map it read-only (firmware code).
    #[serde(default)]
    pub readonly: bool,
}

/// Where an incoming migration comes from (`-incoming`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase", deny_unknown_fields)]
pub enum Incoming {
    /// `-incoming defer`: the URI comes later with QMP `migrate-incoming`.
    Defer,
    /// `-incoming exec:<command>` (Kata restores templates with `exec:cat <file>`).
    Exec {
        /// The shell command whose output is the migration stream.
        command: String,
    },
    /// `-incoming fd:<n>`: a descriptor holding the stream.
    Fd {
        /// The descriptor.
        fd: FdArg,
    },
    /// Any other URI QEMU accepts (`tcp:…`, `unix:…`, `file:…`).
    Uri {
        /// The URI.
        uri: String,
    },
}

/// Where a QMP (or HMP) monitor listens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MonitorEndpoint {
    /// QEMU creates and listens on this Unix socket path.
    Path(PathBuf),
    /// QEMU listens on an already bound and listening socket the launcher passes in
    /// (`fd=N`): the client can connect before QEMU even starts, so nobody polls.
    Fd(FdArg),
}

/// A monitor's protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MonitorMode {
    /// QMP (JSON).
    #[default]
    Control,
    /// HMP (the human monitor).
    Readline,
}

/// A monitor: `-chardev socket,id=<id>,…,server=on,wait=off -mon chardev=<id>,mode=control`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monitor {
    /// The chardev id.
    pub id: String,
    /// Where it listens.
    pub endpoint: MonitorEndpoint,
    /// QMP or HMP.
    #[serde(default)]
    pub mode: MonitorMode,
}

impl Monitor {
    /// A QMP monitor `id` listening on `endpoint`.
    pub fn qmp(id: impl Into<String>, endpoint: MonitorEndpoint) -> Self {
        Monitor {
            id: id.into(),
            endpoint,
            mode: MonitorMode::Control,
        }
    }

    fn chardev(&self) -> Result<Part<'_>> {
        check_id("monitor", "id", &self.id)?;
        let endpoint = match &self.endpoint {
            MonitorEndpoint::Path(path) => {
                Props::new().with("path", path_str("monitor", "path", path)?)
            }
            MonitorEndpoint::Fd(fd) => Props::new().with("fd", Value::Fd(fd)),
        };
        Ok(Part::new(
            PartKind::Chardev,
            Props::new()
                .with("backend", "socket")
                .with("id", self.id.as_str())
                .extend(endpoint)
                .with("server", true)
                .with("wait", false),
        ))
    }
}

/// `-sandbox on,…`: QEMU's seccomp filter. Each flag denies a class of system calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sandbox {
    /// `obsolete=deny`.
    pub deny_obsolete: bool,
    /// `elevateprivileges=deny`.
    pub deny_elevate_privileges: bool,
    /// `spawn=deny`.
    pub deny_spawn: bool,
    /// `resourcecontrol=deny`.
    pub deny_resource_control: bool,
}

impl Sandbox {
    /// Kata's filter: everything denied.
    pub fn deny_all() -> Self {
        Sandbox {
            deny_obsolete: true,
            deny_elevate_privileges: true,
            deny_spawn: true,
            deny_resource_control: true,
        }
    }

    fn write(&self, out: &mut String) {
        out.push_str("on");
        for (flag, name) in [
            (self.deny_obsolete, "obsolete"),
            (self.deny_elevate_privileges, "elevateprivileges"),
            (self.deny_spawn, "spawn"),
            (self.deny_resource_control, "resourcecontrol"),
        ] {
            if flag {
                out.push(',');
                out.push_str(name);
                out.push_str("=deny");
            }
        }
    }
}

/// Process-level switches (govmm's `Knobs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    /// `-no-user-config`: ignore QEMU's configuration files.
    pub no_user_config: bool,
    /// `-nodefaults`: no default devices.
    pub nodefaults: bool,
    /// `-nographic`: no display; serial on stdio unless redirected.
    pub nographic: bool,
    /// `-no-reboot`: exit instead of rebooting.
    pub no_reboot: bool,
    /// `-no-shutdown`: stay alive after the guest powers off, so the manager can read the
    /// final state before it quits QEMU.
    pub no_shutdown: bool,
    /// `-daemonize`.
    pub daemonize: bool,
    /// `-overcommit mem-lock=on|off` (govmm's `Mlock`; `-realtime` is gone from QEMU).
    pub mem_lock: Option<bool>,
    /// `-S`: do not start the vCPUs until QMP `cont`.
    pub stopped: bool,
}

/// `-kernel`, `-initrd`, `-append`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// The kernel image.
    pub path: PathBuf,
    /// An initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    #[serde(default)]
    pub params: KernelParams,
}

/// A whole virtual machine.
///
/// ```
/// use hvarch_devices::config::{Accelerator, Machine, Memory, Smp, VmConfig};
/// use hvarch_devices::fd::FdTable;
/// use hvarch_devices::part::Syntax;
///
/// let mut vm = VmConfig::new(Machine::new("virt", Accelerator::Tcg));
/// vm.memory = Some(Memory::size(2 << 30));
/// vm.smp = Some(Smp::cpus(2));
/// vm.knobs.stopped = true;
/// let args = vm.to_args(Syntax::Options, &mut FdTable::new()).unwrap();
/// assert_eq!(args, ["-machine", "virt,accel=tcg", "-m", "2G", "-S", "-smp", "2"]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// `-name` (escaped).
    #[serde(default)]
    pub name: Option<String>,
    /// `-uuid` (canonical 8-4-4-4-12 hex form).
    #[serde(default)]
    pub uuid: Option<String>,
    /// `-machine`.
    pub machine: Machine,
    /// `-cpu`.
    #[serde(default)]
    pub cpu: Option<Cpu>,
    /// `-smp`.
    #[serde(default)]
    pub smp: Option<Smp>,
    /// `-m` and the RAM backend.
    #[serde(default)]
    pub memory: Option<Memory>,
    /// QMP / HMP monitors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitors: Vec<Monitor>,
    /// Devices and backends, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// `-rtc`.
    #[serde(default)]
    pub rtc: Option<Rtc>,
    /// `-global` defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub globals: Vec<Global>,
    /// pflash images, unit 0 first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pflash: Vec<Pflash>,
    /// `-vga` (`none` for headless guests).
    #[serde(default)]
    pub vga: Option<String>,
    /// Process switches.
    #[serde(default)]
    pub knobs: Knobs,
    /// Direct kernel boot.
    #[serde(default)]
    pub kernel: Option<Kernel>,
    /// `-bios`.
    #[serde(default)]
    pub bios: Option<PathBuf>,
    /// `-incoming`.
    #[serde(default)]
    pub incoming: Option<Incoming>,
    /// `-pidfile`.
    #[serde(default)]
    pub pidfile: Option<PathBuf>,
    /// `-D`: QEMU's log file.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// `-sandbox`.
    #[serde(default)]
    pub sandbox: Option<Sandbox>,
}

impl VmConfig {
    /// A VM with `machine` and nothing else.
    pub fn new(machine: Machine) -> Self {
        VmConfig {
            name: None,
            uuid: None,
            machine,
            cpu: None,
            smp: None,
            memory: None,
            monitors: Vec::new(),
            devices: Vec::new(),
            rtc: None,
            globals: Vec::new(),
            pflash: Vec::new(),
            vga: None,
            knobs: Knobs::default(),
            kernel: None,
            bios: None,
            incoming: None,
            pidfile: None,
            log_file: None,
            sandbox: None,
        }
    }

    /// Checks the whole configuration: every section, every device, and that ids are unique
    /// within their namespace (devices, block nodes, chardevs, netdevs, objects).
    pub fn validate(&self) -> Result<()> {
        self.check_sections()?;
        let mut ids = Ids::for_config(self);
        for monitor in &self.monitors {
            ids.add(&monitor.chardev()?)?;
        }
        for device in &self.devices {
            device.for_each_part(&mut |part| ids.add(&part))?;
        }
        if let Some(backend) = self.ram_backend() {
            ids.add(&backend.part()?)?;
        }
        Ok(())
    }

    /// The guest RAM backend, if memory has one.
    fn ram_backend(&self) -> Option<&MemoryBackend> {
        self.memory.as_ref().and_then(|m| m.backend.as_ref())
    }

    /// Checks every section but the parts' ids (see [`VmConfig::validate`]).
    fn check_sections(&self) -> Result<()> {
        self.machine.validate()?;
        if let Some(uuid) = &self.uuid {
            check_uuid(uuid)?;
        }
        if let Some(cpu) = &self.cpu {
            cpu.validate()?;
        }
        if let Some(smp) = &self.smp {
            smp.validate()?;
        }
        if let Some(memory) = &self.memory {
            memory.validate()?;
        }
        if let Some(rtc) = &self.rtc {
            if rtc.base.is_empty() {
                return Err(Error::MissingField {
                    what: "rtc",
                    field: "base",
                });
            }
        }
        for global in &self.globals {
            check_option_key("global", "driver", &global.driver)?;
            check_option_key("global", "property", &global.property)?;
        }
        for flash in &self.pflash {
            path_str("pflash", "file", &flash.file)?;
        }
        if let Some(vga) = &self.vga {
            check_option_key("vga", "vga", vga)?;
        }
        if let Some(kernel) = &self.kernel {
            path_str("kernel", "path", &kernel.path)?;
            if let Some(initrd) = &kernel.initrd {
                path_str("kernel", "initrd", initrd)?;
            }
        }
        if let Some(Incoming::Exec { command } | Incoming::Uri { uri: command }) = &self.incoming {
            if command.is_empty() || command.contains('\0') {
                return Err(invalid(
                    "incoming",
                    "uri",
                    command,
                    "must be non-empty text",
                ));
            }
        }
        // PCIe root ports need distinct (chassis, slot) pairs: QEMU refuses a repeat with
        // "Can't add chassis slot, error -16".
        // A handful of ports: compare each with the ones before it.
        let ports = || {
            self.devices.iter().filter_map(|device| match device {
                Device::PcieRootPort(port) => Some(port),
                _ => None,
            })
        };
        for (i, port) in ports().enumerate() {
            if ports()
                .take(i)
                .any(|p| (p.chassis, p.slot) == (port.chassis, port.slot))
            {
                return Err(invalid(
                    "pcie-root-port",
                    "chassis",
                    format!("{}/{}", port.chassis, port.slot),
                    format!("{}: chassis/slot pair used by another root port", port.id),
                ));
            }
        }
        Ok(())
    }

    /// The QEMU arguments (without the binary), in the order described in the module docs.
    ///
    /// Validates the whole configuration as [`VmConfig::validate`] does. Descriptors are
    /// numbered through `fds`; the launcher must map each of `fds`'s entries to its number in
    /// the child.
    pub fn to_args(&self, syntax: Syntax, fds: &mut FdTable) -> Result<Vec<String>> {
        self.to_argv(syntax, fds).map(Argv::into_vec)
    }

    /// [`to_args`](Self::to_args) as one [`Argv`]: the same arguments in one buffer, which is
    /// what the launcher hands to `exec` (a 64-device VM's 280 arguments in a handful of
    /// allocations instead of one each).
    ///
    /// ```
    /// use hvarch_devices::config::{Accelerator, Machine, VmConfig};
    /// use hvarch_devices::fd::FdTable;
    /// use hvarch_devices::part::Syntax;
    /// let vm = VmConfig::new(Machine::new("virt", Accelerator::Tcg));
    /// let argv = vm.to_argv(Syntax::Options, &mut FdTable::new()).unwrap();
    /// assert_eq!(argv, ["-machine", "virt,accel=tcg"]);
    /// assert_eq!(argv.into_vec(), vm.to_args(Syntax::Options, &mut FdTable::new()).unwrap());
    /// ```
    pub fn to_argv(&self, syntax: Syntax, fds: &mut FdTable) -> Result<Argv> {
        self.check_sections()?;
        let mut ids = Ids::for_config(self);
        let mut args = Args::with_capacity(40 + 4 * self.devices.len());
        if let Some(name) = &self.name {
            // `-name` reads an implied `guest=`; a name holding '=' must name its key.
            if name.contains('=') || name.is_empty() {
                let props = Props::new().with("guest", name.as_str());
                args.option("-name", "name", None, &props, fds)?;
            } else {
                args.option("-name", "name", Some(name), &Props::new(), fds)?;
            }
        }
        if let Some(uuid) = &self.uuid {
            args.push2("-uuid", uuid);
        }
        let mut machine = self.machine.props();
        if let (Some(backend), RamAttach::MachineProperty) = (
            self.ram_backend(),
            self.memory
                .as_ref()
                .map_or(RamAttach::NumaNode, |m| m.attach),
        ) {
            machine.push("memory-backend", backend.id.as_str());
        }
        args.option(
            "-machine",
            "machine",
            Some(&self.machine.machine_type),
            &machine,
            fds,
        )?;
        if let Some(cpu) = &self.cpu {
            args.text("-cpu", |out| cpu.write(out));
        }
        for monitor in &self.monitors {
            let chardev = monitor.chardev()?;
            ids.add(&chardev)?;
            args.part(&chardev, syntax, fds)?;
            let mode = match monitor.mode {
                MonitorMode::Control => "control",
                MonitorMode::Readline => "readline",
            };
            let mon = Props::new()
                .with("chardev", monitor.id.as_str())
                .with("mode", mode);
            args.option("-mon", "mon", None, &mon, fds)?;
        }
        if let Some(memory) = &self.memory {
            let props = Props::new()
                .opt("slots", memory.slots)
                .opt_size("maxmem", memory.maxmem);
            args.option_after("-m", "memory", &props, fds, |out| {
                write_size(out, memory.size)
            })?;
        }
        for device in &self.devices {
            device.for_each_part(&mut |part| {
                ids.add(&part)?;
                args.part(&part, syntax, fds)
            })?;
        }
        if let Some(rtc) = &self.rtc {
            args.option("-rtc", "rtc", None, &rtc.props(), fds)?;
        }
        for global in &self.globals {
            let props = Props::new()
                .with("driver", global.driver.as_str())
                .with("property", global.property.as_str())
                .with("value", global.value.as_str());
            args.option("-global", "global", None, &props, fds)?;
        }
        for (unit, flash) in self.pflash.iter().enumerate() {
            let props = Props::new()
                .with("if", "pflash")
                .with("format", "raw")
                .with("unit", unit as u64)
                .with("file", path_str("pflash", "file", &flash.file)?)
                .flag("readonly", flash.readonly);
            args.option("-drive", "pflash", None, &props, fds)?;
        }
        if let Some(vga) = &self.vga {
            args.push2("-vga", vga);
        }
        let k = &self.knobs;
        for (on, flag) in [
            (k.no_user_config, "-no-user-config"),
            (k.nodefaults, "-nodefaults"),
            (k.nographic, "-nographic"),
            (k.no_reboot, "-no-reboot"),
            (k.no_shutdown, "-no-shutdown"),
            (k.daemonize, "-daemonize"),
        ] {
            if on {
                args.push1(flag);
            }
        }
        if let Some(memory) = &self.memory {
            if let Some(backend) = &memory.backend {
                let part = backend.part()?;
                ids.add(&part)?;
                args.part(&part, syntax, fds)?;
                if memory.attach == RamAttach::NumaNode {
                    let numa = Props::new().with("memdev", backend.id.as_str());
                    args.option("-numa", "numa", Some("node"), &numa, fds)?;
                }
            }
        }
        if let Some(lock) = k.mem_lock {
            args.push2(
                "-overcommit",
                if lock { "mem-lock=on" } else { "mem-lock=off" },
            );
        }
        if k.stopped {
            args.push1("-S");
        }
        if let Some(kernel) = &self.kernel {
            args.push2("-kernel", path_str("kernel", "path", &kernel.path)?);
            if let Some(initrd) = &kernel.initrd {
                args.push2("-initrd", path_str("kernel", "initrd", initrd)?);
            }
            if !kernel.params.is_empty() {
                args.text("-append", |out| {
                    let _ = write!(out, "{}", kernel.params);
                });
            }
        }
        if let Some(bios) = &self.bios {
            args.push2("-bios", path_str("bios", "bios", bios)?);
        }
        if let Some(incoming) = &self.incoming {
            let fd = match incoming {
                Incoming::Fd { fd } => Some(fds.resolve(fd)?),
                _ => None,
            };
            args.text("-incoming", |out| match incoming {
                Incoming::Defer => out.push_str("defer"),
                Incoming::Exec { command } => {
                    out.push_str("exec:");
                    out.push_str(command);
                }
                Incoming::Fd { .. } => {
                    out.push_str("fd:");
                    out.push_str(fd.as_deref().unwrap_or_default());
                }
                Incoming::Uri { uri } => out.push_str(uri),
            });
        }
        if let Some(pidfile) = &self.pidfile {
            args.push2("-pidfile", path_str("vm", "pidfile", pidfile)?);
        }
        if let Some(log) = &self.log_file {
            args.push2("-D", path_str("vm", "log_file", log)?);
        }
        if let Some(sandbox) = &self.sandbox {
            args.text("-sandbox", |out| sandbox.write(out));
        }
        if let Some(smp) = &self.smp {
            args.option_after("-smp", "smp", &smp.props(), fds, |out| {
                let _ = write!(out, "{}", smp.cpus);
            })?;
        }
        Ok(args.0)
    }
}

/// The ids of a configuration's parts, by namespace, to find one used twice.
struct Ids<'a>(HashSet<(PartKind, Cow<'a, str>), BuildHasherDefault<Fnv1a>>);

impl<'a> Ids<'a> {
    /// Room for the parts of `vm` (a device has at most three).
    fn for_config(vm: &VmConfig) -> Self {
        let parts = vm.monitors.len() + 2 * vm.devices.len() + 1;
        Ids(HashSet::with_capacity_and_hasher(parts, Default::default()))
    }

    /// Notes `part`'s id (`-drive` shares the block node namespace; `-serial` and `-fw_cfg`
    /// have none); refuses an id already used in its namespace.
    fn add(&mut self, part: &Part<'a>) -> Result<()> {
        let namespace = match part.kind() {
            PartKind::Drive => PartKind::Blockdev,
            PartKind::Serial | PartKind::FwCfg => return Ok(()),
            kind => kind,
        };
        match part.id_value() {
            Some(id) if !self.0.insert((namespace, id.clone())) => Err(invalid(
                "vm",
                "devices",
                &id,
                format!("{} id used twice", namespace.option()),
            )),
            _ => Ok(()),
        }
    }
}

/// FNV-1a: a fast hash for the few short ids of one configuration (no untrusted flood to
/// defend against: the configuration is the caller's own).
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// An argv under construction: every argument written straight into the one buffer of an
/// [`Argv`].
struct Args(Argv);

impl Args {
    /// Room for `args` arguments of about 40 bytes each.
    fn with_capacity(args: usize) -> Self {
        Args(Argv::with_capacity(args, 40 * args))
    }

    fn push1(&mut self, flag: &str) {
        self.0.push(flag);
    }

    fn push2(&mut self, option: &str, value: &str) {
        self.0.push(option);
        self.0.push(value);
    }

    /// `option` and the text `write` produces.
    fn text(&mut self, option: &str, write: impl FnOnce(&mut String)) {
        self.0.push(option);
        let _ = self.0.push_with::<()>(|out| {
            write(out);
            Ok(())
        });
    }

    /// `option` and `props` in option syntax after the implied value `implied`.
    fn option(
        &mut self,
        option: &str,
        what: &str,
        implied: Option<&str>,
        props: &Props<'_>,
        fds: &mut dyn FdResolver,
    ) -> Result<()> {
        self.0.push(option);
        self.0.push_with(|out| {
            let start = out.len();
            let implied = implied.map(|value| (what, value));
            write_options(out, start, what, implied, props.iter(), fds)
        })
    }

    /// `option` and `props` in option syntax after the text `head` writes (a value of ours
    /// that needs no escaping, e.g. the memory size of `-m`).
    fn option_after(
        &mut self,
        option: &str,
        what: &str,
        props: &Props<'_>,
        fds: &mut dyn FdResolver,
        head: impl FnOnce(&mut String),
    ) -> Result<()> {
        self.0.push(option);
        self.0.push_with(|out| {
            let start = out.len();
            head(out);
            write_options(out, start, what, None, props.iter(), fds)
        })
    }

    fn part(&mut self, part: &Part<'_>, syntax: Syntax, fds: &mut dyn FdResolver) -> Result<()> {
        self.0.push(part.kind().option());
        self.0.push_with(|out| part.write(out, syntax, fds))
    }
}

/// Checks the canonical UUID form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex).
fn check_uuid(uuid: &str) -> Result<()> {
    let groups: Vec<&str> = uuid.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip(lengths)
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "vm",
            "uuid",
            uuid,
            "expected the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockBackend, BlockDevice, BlockProtocol};
    use crate::chardev::{CharBackend, CharDevice, Chardev, SerialController};
    use proptest::prelude::*;
    use std::os::fd::OwnedFd;

    fn kata_like_arm64() -> VmConfig {
        let mut machine = Machine::new("virt", Accelerator::Kvm);
        machine.options = MachineOptions::parse("usb=off,gic-version=host,nvdimm=on").unwrap();
        let mut vm = VmConfig::new(machine);
        vm.name = Some("sandbox-1".into());
        vm.uuid = Some("7c9e6679-7425-40de-944b-e07fc1f90ae7".into());
        vm.cpu = Some(Cpu {
            model: "host".into(),
            features: vec!["pmu=off".into()],
        });
        vm.smp = Some(Smp {
            cpus: 1,
            sockets: Some(123),
            dies: None,
            cores: Some(1),
            threads: Some(1),
            maxcpus: Some(123),
        });
        let mut memory = Memory::size(2048 << 20);
        memory.slots = Some(10);
        memory.maxmem = Some(16 << 30);
        memory.backend = Some(MemoryBackend::ram("dimm1", 2048 << 20));
        vm.memory = Some(memory);
        vm.monitors = vec![Monitor::qmp(
            "qmp0",
            MonitorEndpoint::Path("/run/vc/vm/1/qmp.sock".into()),
        )];
        let mut serial = SerialController::new("serial0");
        serial.max_ports = Some(2);
        vm.devices.push(serial.into());
        vm.devices.push(
            CharDevice::console(
                "console0",
                Chardev::new(
                    "charconsole0",
                    CharBackend::server_socket("/run/vc/vm/1/console.sock"),
                ),
            )
            .into(),
        );
        vm.rtc = Some(Rtc::kata());
        vm.globals.push(Global {
            driver: "kvm-pit".into(),
            property: "lost_tick_policy".into(),
            value: "discard".into(),
        });
        vm.vga = Some("none".into());
        vm.knobs = Knobs {
            no_user_config: true,
            nodefaults: true,
            nographic: true,
            no_reboot: true,
            daemonize: true,
            mem_lock: Some(false),
            ..Knobs::default()
        };
        let mut params = KernelParams::new();
        params.push("console", Some("hvc0")).unwrap();
        params.push("quiet", None).unwrap();
        vm.kernel = Some(Kernel {
            path: "/usr/share/kata/vmlinux".into(),
            initrd: None,
            params,
        });
        vm.pidfile = Some("/run/vc/vm/1/pid".into());
        vm.sandbox = Some(Sandbox::deny_all());
        vm
    }

    /// Kata's illustrative arm64 argv (kata-go.md §2.8) in modern syntax and govmm's order.
    #[test]
    fn kata_arm64_argv_in_govmm_order() {
        let args = kata_like_arm64()
            .to_args(Syntax::Options, &mut FdTable::new())
            .unwrap();
        let expected = [
            "-name",
            "sandbox-1",
            "-uuid",
            "7c9e6679-7425-40de-944b-e07fc1f90ae7",
            "-machine",
            "virt,accel=kvm,usb=off,gic-version=host,nvdimm=on",
            "-cpu",
            "host,pmu=off",
            "-chardev",
            "socket,id=qmp0,path=/run/vc/vm/1/qmp.sock,server=on,wait=off",
            "-mon",
            "chardev=qmp0,mode=control",
            "-m",
            "2G,slots=10,maxmem=16G",
            "-device",
            "virtio-serial-pci,id=serial0,max_ports=2",
            "-chardev",
            "socket,id=charconsole0,path=/run/vc/vm/1/console.sock,server=on,wait=off",
            "-device",
            "virtconsole,chardev=charconsole0,id=console0",
            "-rtc",
            "base=utc,driftfix=slew,clock=host",
            "-global",
            "driver=kvm-pit,property=lost_tick_policy,value=discard",
            "-vga",
            "none",
            "-no-user-config",
            "-nodefaults",
            "-nographic",
            "-no-reboot",
            "-daemonize",
            "-object",
            "memory-backend-ram,id=dimm1,size=2G",
            "-numa",
            "node,memdev=dimm1",
            "-overcommit",
            "mem-lock=off",
            "-kernel",
            "/usr/share/kata/vmlinux",
            "-append",
            "console=hvc0 quiet",
            "-pidfile",
            "/run/vc/vm/1/pid",
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-smp",
            "1,sockets=123,cores=1,threads=1,maxcpus=123",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn json_syntax_for_devices_option_syntax_for_chardevs() {
        let mut vm = kata_like_arm64();
        vm.devices.push(
            BlockDevice::new(
                "disk0",
                BlockBackend::new(
                    "disk0-node",
                    BlockProtocol::File {
                        filename: "/a,b=c".into(),
                    },
                ),
            )
            .into(),
        );
        let args = vm.to_args(Syntax::Json, &mut FdTable::new()).unwrap();
        let value_of = |needle: &str| {
            args.iter()
                .find(|a| a.contains(needle))
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(
            value_of("disk0-node\",\"file"),
            r#"{"driver":"raw","node-name":"disk0-node","file":{"driver":"file","filename":"/a,b=c"}}"#
        );
        assert_eq!(
            value_of("virtio-serial-pci"),
            r#"{"driver":"virtio-serial-pci","id":"serial0","max_ports":2}"#
        );
        assert!(args.contains(
            &"socket,id=charconsole0,path=/run/vc/vm/1/console.sock,server=on,wait=off".to_owned()
        ));
        assert_eq!(
            value_of("memory-backend-ram"),
            r#"{"qom-type":"memory-backend-ram","id":"dimm1","size":2147483648}"#
        );
    }

    #[test]
    fn descriptors_are_numbered_for_the_child() {
        let mut vm = VmConfig::new(Machine::new("virt", Accelerator::Tcg));
        let listener = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let stream = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        vm.monitors = vec![Monitor::qmp("qmp0", MonitorEndpoint::Fd(listener.into()))];
        vm.incoming = Some(Incoming::Fd { fd: stream.into() });
        let mut fds = FdTable::new();
        let args = vm.to_args(Syntax::Options, &mut fds).unwrap();
        assert!(args.contains(&"socket,id=qmp0,fd=3,server=on,wait=off".to_owned()));
        assert!(args.contains(&"fd:4".to_owned()));
        assert_eq!(fds.len(), 2);
        let numbers: Vec<i32> = fds.mappings().map(|(n, _)| n).collect();
        assert_eq!(numbers, [3, 4]);
    }

    #[test]
    fn errors_name_section_and_field() {
        let mut vm = VmConfig::new(Machine::new("virt", Accelerator::Tcg));
        vm.smp = Some(Smp {
            maxcpus: Some(1),
            ..Smp::cpus(2)
        });
        assert!(vm.validate().unwrap_err().to_string().contains("`maxcpus`"));
        vm.smp = Some(Smp {
            sockets: Some(2),
            cores: Some(1),
            threads: Some(1),
            maxcpus: Some(4),
            ..Smp::cpus(2)
        });
        assert!(vm
            .validate()
            .unwrap_err()
            .to_string()
            .contains("must equal maxcpus"));
        vm.smp = None;
        vm.memory = Some(Memory {
            slots: Some(4),
            ..Memory::size(1 << 30)
        });
        assert_eq!(
            vm.validate().unwrap_err().to_string(),
            "memory: `maxmem` is required"
        );
        vm.memory = Some(Memory {
            backend: Some(MemoryBackend::ram("ram", 1 << 20)),
            ..Memory::size(1 << 30)
        });
        assert!(vm
            .validate()
            .unwrap_err()
            .to_string()
            .contains("backend.size"));
        vm.memory = None;
        vm.uuid = Some("not-a-uuid".into());
        assert!(vm.validate().unwrap_err().to_string().contains("uuid"));
        vm.uuid = None;
        vm.machine.options = MachineOptions::parse("accel=kvm").unwrap();
        assert!(matches!(vm.validate(), Err(Error::Conflict { .. })));
        vm.machine.options = MachineOptions::new();
        assert!(MachineOptions::parse("a=1,b").is_err());
        assert!(MachineOptions::parse("bad key=1").is_err());
        let chardev = || Chardev::new("c0", CharBackend::Pty);
        vm.devices = vec![
            CharDevice::console("con0", chardev()).into(),
            CharDevice::console("con1", chardev()).into(),
        ];
        assert!(vm
            .validate()
            .unwrap_err()
            .to_string()
            .contains("-chardev id used twice"));
    }

    /// One element of a configuration whose ids the namespace property test draws.
    #[derive(Clone, Debug)]
    enum Holder {
        /// A QMP monitor: its chardev id.
        Monitor(&'static str),
        /// A virtio console: its device id and its chardev's id.
        Console(&'static str, &'static str),
        /// A virtio-blk disk: its device id and its backend's node name.
        Disk(&'static str, &'static str),
    }

    proptest! {
        /// `validate` and `to_args` refuse a configuration exactly when an id repeats within
        /// one namespace (devices, chardevs, block nodes), naming it; the same id in two
        /// namespaces is fine.
        #[test]
        fn ids_repeat_only_across_namespaces(
            holders in proptest::collection::vec(
                {
                    let id = || prop::sample::select(&["a", "b", "c", "d"][..]);
                    prop_oneof![
                        id().prop_map(Holder::Monitor),
                        (id(), id()).prop_map(|(d, c)| Holder::Console(d, c)),
                        (id(), id()).prop_map(|(d, n)| Holder::Disk(d, n)),
                    ]
                },
                0..6,
            ),
            syntax in prop_oneof![Just(Syntax::Options), Just(Syntax::Json)],
        ) {
            let mut vm = VmConfig::new(Machine::new("virt", Accelerator::Tcg));
            let mut seen: Vec<(&str, &str)> = Vec::new();
            let mut repeated = None;
            let mut note = |namespace: &'static str, id: &'static str| {
                if seen.contains(&(namespace, id)) {
                    repeated.get_or_insert((namespace, id));
                }
                seen.push((namespace, id));
            };
            for holder in &holders {
                match *holder {
                    Holder::Monitor(chardev) => {
                        note("-chardev", chardev);
                        vm.monitors.push(Monitor::qmp(
                            chardev,
                            MonitorEndpoint::Path(format!("/run/{chardev}.sock").into()),
                        ));
                    }
                    Holder::Console(device, chardev) => {
                        note("-chardev", chardev);
                        note("-device", device);
                        vm.devices.push(
                            CharDevice::console(device, Chardev::new(chardev, CharBackend::Pty))
                                .into(),
                        );
                    }
                    Holder::Disk(device, node) => {
                        note("-blockdev", node);
                        note("-device", device);
                        let backend = BlockBackend::new(
                            node,
                            BlockProtocol::NullCo { size: 1 << 20 },
                        );
                        vm.devices.push(BlockDevice::new(device, backend).into());
                    }
                }
            }
            let validated = vm.validate();
            let rendered = vm.to_args(syntax, &mut FdTable::new());
            match repeated {
                None => {
                    prop_assert!(validated.is_ok(), "{:?}", validated);
                    prop_assert!(rendered.is_ok(), "{:?}", rendered);
                }
                Some(_) => {
                    for result in [validated, rendered.map(|_| ())] {
                        prop_assert!(result.is_err(), "accepted although {:?} repeats", seen);
                        let text = result.unwrap_err().to_string();
                        prop_assert!(
                            seen.iter().enumerate().any(|(i, (ns, id))| {
                                seen[..i].contains(&(*ns, *id))
                                    && text.contains(&format!("{ns} id used twice"))
                                    && text.contains(&format!("{id:?}: "))
                            }),
                            "{} names no repeated id of {:?}", text, seen
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn root_ports_need_distinct_chassis_slots() {
        use crate::bridge::PcieRootPort;
        let mut vm = VmConfig::new(Machine::new("q35", Accelerator::Tcg));
        vm.devices = vec![
            PcieRootPort::new("rp0").into(),
            PcieRootPort::new("rp1").into(),
        ];
        assert!(vm
            .validate()
            .unwrap_err()
            .to_string()
            .contains("rp1: chassis/slot pair used by another root port"));
        if let Device::PcieRootPort(port) = &mut vm.devices[1] {
            port.chassis = 1;
        }
        vm.validate().unwrap();
    }

    #[test]
    fn names_with_commas_and_equals_stay_one_value() {
        let mut vm = VmConfig::new(Machine::new("virt", Accelerator::Tcg));
        vm.name = Some("a,b".into());
        let args = vm.to_args(Syntax::Options, &mut FdTable::new()).unwrap();
        assert_eq!(args[..2], ["-name", "a,,b"]);
        vm.name = Some("k=v".into());
        let args = vm.to_args(Syntax::Options, &mut FdTable::new()).unwrap();
        assert_eq!(args[..2], ["-name", "guest=k=v"]);
    }

    #[test]
    fn machine_options_escape_values() {
        let mut machine = Machine::new("virt", Accelerator::Tcg);
        machine.options.set("dumpdtb", "/tmp/a,b.dtb").unwrap();
        let vm = VmConfig::new(machine);
        let args = vm.to_args(Syntax::Options, &mut FdTable::new()).unwrap();
        assert_eq!(args, ["-machine", "virt,accel=tcg,dumpdtb=/tmp/a,,b.dtb"]);
        let parsed = MachineOptions::parse("dumpdtb=/tmp/a,,b.dtb").unwrap();
        assert_eq!(parsed.get("dumpdtb"), Some("/tmp/a,b.dtb"));
    }

    #[test]
    fn toml_spec_round_trip() {
        let vm = kata_like_arm64();
        let text = toml::to_string(&vm).unwrap();
        let back: VmConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, vm);
        let err =
            toml::from_str::<VmConfig>("[machine]\ntype = \"virt\"\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    /// The value after the first `flag` of `args`.
    fn after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).map(String::as_str)
    }

    /// The fields of a generated configuration whose rules it breaks, written out again from
    /// the docs (machine type, SMP and memory rules, NUL bytes), whatever the check order.
    fn broken_fields(vm: &VmConfig) -> Vec<&'static str> {
        let mut broken = Vec::new();
        let key = |k: &str| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !key(&vm.machine.machine_type) {
            broken.push("type");
        }
        if vm.name.as_deref().is_some_and(|n| n.contains('\0')) {
            broken.extend(["name", "guest"]);
        }
        if let Some(smp) = &vm.smp {
            if smp.cpus == 0 {
                broken.push("cpus");
            }
            if smp.maxcpus.is_some_and(|m| m < smp.cpus) {
                broken.push("maxcpus");
            }
        }
        if let Some(memory) = &vm.memory {
            if memory.size == 0 {
                broken.push("size");
            }
            if memory.slots.is_some() && memory.maxmem.is_none()
                || memory.maxmem.is_some_and(|m| m < memory.size)
            {
                broken.push("maxmem");
            }
        }
        broken
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: crate::test_support::cases(512, 1),
            ..ProptestConfig::default()
        })]

        /// A configuration renders with every section as given (the machine and its options,
        /// the name, SMP, memory and the kernel command line read back as they were set), or
        /// is refused naming a field whose rule it breaks.
        #[test]
        fn configs_render_as_given_or_name_the_field(
            machine in prop_oneof![4 => "[a-z][a-z0-9.-]{0,10}", 1 => "\\PC{0,12}"],
            options in prop_oneof![
                3 => proptest::collection::vec(("[a-z][a-z0-9-]{0,8}", "[^\u{0}]{0,12}"), 0..4),
                1 => Just(vec![("accel".to_owned(), "kvm".to_owned())]),
            ],
            name in proptest::option::of("[^\u{0}]{0,16}|\\PC{0,4}\u{0}"),
            cpus in prop_oneof![4 => 1u32..300, 1 => Just(0)],
            maxcpus in proptest::option::of(0u32..300),
            size in prop_oneof![4 => 1u64..(1 << 40), 1 => Just(0)],
            slots in proptest::option::of(0u32..64),
            maxmem in proptest::option::of(0u64..(1 << 41)),
            params in proptest::collection::vec(("[a-z][a-z0-9_.-]{0,8}", proptest::option::of("[^\"\u{0}]{0,12}")), 0..4),
            syntax in prop_oneof![Just(Syntax::Options), Just(Syntax::Json)],
        ) {
            let mut machine_options = MachineOptions::new();
            for (key, value) in &options {
                machine_options.set(key, value).unwrap();
            }
            let mut vm = VmConfig::new(Machine {
                machine_type: machine.clone(),
                accel: Some(Accelerator::Tcg),
                options: machine_options.clone(),
            });
            vm.name = name.clone();
            vm.smp = Some(Smp { maxcpus, ..Smp::cpus(cpus) });
            vm.memory = Some(Memory { slots, maxmem, ..Memory::size(size) });
            let mut kernel_params = KernelParams::new();
            for (key, value) in &params {
                kernel_params.push(key, value.as_deref()).unwrap();
            }
            vm.kernel = Some(Kernel { path: "/k".into(), initrd: None, params: kernel_params.clone() });
            let mut broken = broken_fields(&vm);
            if machine_options.get("accel").is_some() {
                broken.push("accel");
            }
            let args = match vm.to_args(syntax, &mut FdTable::new()) {
                Ok(args) => args,
                Err(e) => {
                    prop_assert!(
                        e.field().is_some_and(|f| broken.contains(&f)),
                        "{} names none of {:?}", e, broken
                    );
                    return Ok(());
                }
            };
            prop_assert!(broken.is_empty(), "rendered although {:?} are broken", broken);
            let machine_args = parse_options(after(&args, "-machine").unwrap_or_default(), Some("type"));
            let mut expected = vec![("type".to_owned(), machine), ("accel".to_owned(), "tcg".to_owned())];
            expected.extend(machine_options.iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
            prop_assert_eq!(machine_args, Ok(expected));
            if let Some(name) = &name {
                let parsed = parse_options(after(&args, "-name").unwrap_or_default(), Some("guest"));
                prop_assert_eq!(parsed, Ok(vec![("guest".to_owned(), name.clone())]));
            }
            let smp = match maxcpus {
                Some(max) => format!("{cpus},maxcpus={max}"),
                None => cpus.to_string(),
            };
            prop_assert_eq!(after(&args, "-smp"), Some(smp.as_str()));
            let mut m = crate::syntax::format_size(size);
            if let Some(slots) = slots {
                m.push_str(&format!(",slots={slots}"));
            }
            if let Some(maxmem) = maxmem {
                m.push_str(&format!(",maxmem={}", crate::syntax::format_size(maxmem)));
            }
            prop_assert_eq!(after(&args, "-m"), Some(m.as_str()));
            match after(&args, "-append") {
                Some(line) => prop_assert_eq!(KernelParams::parse(line)?, kernel_params),
                None => prop_assert!(kernel_params.is_empty()),
            }
        }
    }
}
