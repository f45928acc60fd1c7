//! [`VmSpec`]: what a user writes to describe a VM (a TOML spec file, or built in code).

use std::path::PathBuf;

use hvarch_arch::guest_arch::GuestArch;
use hvarch_arch::resources::{BlockDrive, NetEndpoint, VfioDev, Volume};
use hvarch_arch::settings::HypervisorConfig;
use hvarch_devices::fd::FdArg;
use hvarch_devices::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where runtime files go when the spec names no `runtime_dir`: `/run/hvarch/<id>`.
pub const DEFAULT_RUNTIME_ROOT: &str = "/run/hvarch";

/// The kernel of the built-in default VM (Kata's packaged guest kernel path).
pub const DEFAULT_KERNEL: &str = "/usr/share/kata-containers/vmlinux.container";
/// The initrd of the built-in default VM (Kata's packaged initrd path).
pub const DEFAULT_INITRD: &str = "/usr/share/kata-containers/kata-containers-initrd.img";

/// A VM as a user describes it: the guest architecture, Kata's hypervisor settings, the
/// sandbox id, and the devices to cold-plug. [`crate::assemble()`] turns it into a QEMU
/// command line the way Kata's `createSandbox` does.
///
/// In a spec file (TOML) every field but `id` is optional:
///
/// ```
/// let spec: hvarch::VmSpec = toml::from_str(r#"
///     arch = "aarch64"
///     id = "demo"
///     [hypervisor]
///     kernel_path = "/boot/vmlinux"
///     initrd_path = "/boot/initrd.img"
///     accelerator = "tcg"
///     [[volumes]]
///     mount_tag = "shared"
///     host_path = "/srv/shared"
/// "#).unwrap();
/// assert_eq!(spec.runtime_dir(), std::path::Path::new("/run/hvarch/demo"));
/// assert_eq!(spec.hypervisor.num_vcpus, 1);
/// ```
///
/// Network endpoints carry opened descriptors, so they cannot come from a file: add them in
/// code to [`VmSpec::networks`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// The guest architecture; the host's ([`crate::native::native_arch`]) when unset.
    #[serde(default)]
    pub arch: Option<GuestArch>,
    /// The sandbox id: the VM is named `sandbox-<id>` and its runtime files live in
    /// `<runtime_dir>`. ASCII letters, digits, `-`, `_` and `.`, starting with a letter or digit.
    pub id: String,
    /// The VM's UUID (8-4-4-4-12 hex); derived from `id` when unset, so the command line is
    /// reproducible (Kata generates one and persists it).
    #[serde(default)]
    pub uuid: Option<String>,
    /// Where QEMU's sockets (`console.sock`, `qmp.sock`, `kata.sock`) and `pid` file go;
    /// `/run/hvarch/<id>` when unset. The launcher creates it (mode 0700).
    #[serde(default)]
    pub runtime_dir: Option<PathBuf>,
    /// Host memory in MiB, the `maxmem` ceiling; `MemTotal` of `/proc/meminfo` when unset.
    #[serde(default)]
    pub host_memory_mb: Option<u64>,
    /// Host CPUs, which cap the vCPU ceiling as in Kata; this process's CPU count when unset.
    #[serde(default)]
    pub host_cpus: Option<u32>,
    /// Whether the host is itself a VM (Kata's `RunningOnVMM`; read from `/proc/cpuinfo` on
    /// x86_64 when unset, `false` elsewhere). Under KVM, unless
    /// `hypervisor.disable_nesting_checks`, a nested host gets virtio-pci devices with
    /// `disable-modern=on`.
    #[serde(default)]
    pub host_nested: Option<bool>,
    /// The agent talks over vhost-vsock (`agent.use_vsock=true`) instead of the virtio-serial
    /// channel `agent.channel.0` on `<runtime_dir>/kata.sock`.
    #[serde(default)]
    pub use_vsock: bool,
    /// The guest's vsock context id (3..=4294967295); required with `use_vsock`.
    #[serde(default)]
    pub vsock_cid: Option<u32>,
    /// An opened `/dev/vhost-vsock` to hand to QEMU (code only).
    #[serde(skip)]
    pub vsock_fd: Option<FdArg>,
    /// Hypervisor settings (Kata's `[hypervisor.qemu]`), with Kata's defaults.
    #[serde(default)]
    pub hypervisor: HypervisorConfig,
    /// Host directories shared over virtio-9p.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// Network endpoints (code only: they hold tap and vhost descriptors).
    #[serde(skip)]
    pub networks: Vec<NetEndpoint>,
    /// Disks attached with virtio-blk.
    #[serde(default)]
    pub block_drives: Vec<BlockDrive>,
    /// Host PCI devices passed through with VFIO.
    #[serde(default)]
    pub vfio: Vec<VfioDev>,
    /// Further devices, appended after everything else (any [`Device`], tagged by `type`).
    #[serde(default)]
    pub extra_devices: Vec<Device>,
    /// Start with the vCPUs paused (`-S`) until QMP `cont`.
    #[serde(default)]
    pub stopped: bool,
    /// Let QEMU daemonize (`-daemonize`; Kata does, hvarch's launcher does not).
    #[serde(default)]
    pub daemonize: bool,
    /// Keep QEMU alive after the guest powers off (`-no-shutdown`).
    #[serde(default)]
    pub no_shutdown: bool,
}

impl VmSpec {
    /// A spec with id `id` and every other field at its default (no kernel yet).
    pub fn new(id: impl Into<String>) -> Self {
        VmSpec {
            arch: None,
            id: id.into(),
            uuid: None,
            runtime_dir: None,
            host_memory_mb: None,
            host_cpus: None,
            host_nested: None,
            use_vsock: false,
            vsock_cid: None,
            vsock_fd: None,
            hypervisor: HypervisorConfig::default(),
            volumes: Vec::new(),
            networks: Vec::new(),
            block_drives: Vec::new(),
            vfio: Vec::new(),
            extra_devices: Vec::new(),
            stopped: false,
            daemonize: false,
            no_shutdown: false,
        }
    }

    /// The built-in default VM, `id = "default"`, with Kata's defaults: 1 vCPU, 2048 MiB, one
    /// bridge, a console socket, virtio-rng, a virtio-scsi controller, and an initrd boot
    /// from Kata's packaged kernel and initrd paths ([`DEFAULT_KERNEL`], [`DEFAULT_INITRD`]).
    pub fn kata_default() -> Self {
        let mut spec = VmSpec::new("default");
        spec.hypervisor.kernel_path = Some(DEFAULT_KERNEL.into());
        spec.hypervisor.initrd_path = Some(DEFAULT_INITRD.into());
        spec
    }

    /// The guest architecture: `arch`, else the host's.
    pub fn guest_arch(&self) -> Result<GuestArch> {
        self.arch
            .or_else(crate::native::native_arch)
            .ok_or(Error::NoNativeArch {
                host: std::env::consts::ARCH,
            })
    }

    /// The runtime directory: `runtime_dir`, else `/run/hvarch/<id>`.
    pub fn runtime_dir(&self) -> PathBuf {
        self.runtime_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_ROOT).join(&self.id))
    }

    /// The UUID: `uuid`, else one derived from `id`.
    pub fn uuid(&self) -> String {
        self.uuid.clone().unwrap_or_else(|| derived_uuid(&self.id))
    }
}

/// A UUID derived from `id` (two FNV-1a hashes), with RFC 9562's version 8 ("custom") and
/// variant bits, so the same id always gives the same command line.
fn derived_uuid(id: &str) -> String {
    let hex = format!(
        "{}{}",
        hvarch_arch::arch::stable_hex(&format!("uuid-hi:{id}")),
        hvarch_arch::arch::stable_hex(&format!("uuid-lo:{id}"))
    );
    let mut digits: Vec<char> = hex.chars().collect();
    digits[12] = '8';
    digits[16] = match digits[16].to_digit(16).unwrap_or(0) & 0x3 {
        0 => '8',
        1 => '9',
        2 => 'a',
        _ => 'b',
    };
    let s: String = digits.into_iter().collect();
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

/// Checks a sandbox id: it names files and the VM, so it is a plain file name.
pub(crate) fn check_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        Some("the sandbox id is empty")
    } else if id.len() > 64 {
        Some("at most 64 characters")
    } else if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("must start with an ASCII letter or digit")
    } else if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Some("only ASCII letters, digits, '-', '_' and '.' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::invalid("id", id, reason)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uuid_is_stable_and_canonical() {
        let a = derived_uuid("abc");
        assert_eq!(a, derived_uuid("abc"));
        assert_ne!(a, derived_uuid("abd"));
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('8'));
        assert!(matches!(
            groups[3].chars().next(),
            Some('8' | '9' | 'a' | 'b')
        ));
    }

    #[test]
    fn ids_are_file_names() {
        for ok in ["a", "sandbox-1", "A.b_c", "0abc"] {
            check_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "-a", "a/b", "a b", "a,b", &"x".repeat(65)] {
            let err = check_id(bad).unwrap_err();
            assert!(err.to_string().starts_with("`id`"), "{err}");
        }
    }

    #[test]
    fn toml_spec_round_trips_and_refuses_unknown_fields() {
        let mut spec = VmSpec::kata_default();
        spec.arch = Some(GuestArch::Aarch64);
        spec.volumes.push(Volume {
            mount_tag: "t".into(),
            host_path: "/srv".into(),
        });
        let text = toml::to_string(&spec).unwrap();
        let back: VmSpec = toml::from_str(&text).unwrap();
        assert_eq!(back, spec);
        let err = toml::from_str::<VmSpec>("id = \"a\"\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = toml::from_str::<VmSpec>("id = \"a\"\n[hypervisor]\nnum_vcpu = 1\n").unwrap_err();
        assert!(err.to_string().contains("num_vcpu"), "{err}");
        let err = toml::from_str::<VmSpec>("arch = \"riscv\"\nid = \"a\"\n").unwrap_err();
        assert!(err.to_string().contains("riscv"), "{err}");
    }
}
