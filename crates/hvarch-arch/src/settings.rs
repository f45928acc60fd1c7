//! [`HypervisorConfig`]: the hypervisor settings the arch layer reads, with Kata's defaults.

use std::path::PathBuf;

use hvarch_devices::config::{Accelerator, Sandbox};
use hvarch_devices::kernel_params::KernelParams;
use serde::{Deserialize, Serialize};

/// How container block devices reach the guest (Kata's `block_device_driver`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockDriver {
    /// `scsi-hd` on a virtio-scsi controller (Kata's default).
    #[default]
    VirtioScsi,
    /// virtio-blk-pci on a bridge slot.
    VirtioBlk,
    /// virtio-blk-ccw (s390x).
    VirtioBlkCcw,
    /// An NVDIMM.
    Nvdimm,
}

/// How container filesystems are shared with the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SharedFs {
    /// virtio-9p.
    #[default]
    VirtioFs9p,
    /// virtio-fs: a `vhost-user-fs` device per volume, served by a daemon
    /// (`virtio_fs_daemon`) the launcher starts, with guest RAM shared with it.
    VirtioFs,
    /// No sharing.
    None,
}

/// The virtio-fs daemon's caching policy (Kata's `virtio_fs_cache`, virtiofsd's `--cache`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VirtioFsCache {
    /// Metadata and lookups expire after a timeout; data is cached while a file is open
    /// (close-to-open consistency). Kata's default.
    #[default]
    Auto,
    /// Metadata, data and lookups are cached and never expire.
    Always,
    /// Nothing is cached in the guest.
    Never,
    /// Metadata and lookups are cached and never expire; data is not cached.
    Metadata,
}

impl VirtioFsCache {
    /// The name virtiofsd's `--cache` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            VirtioFsCache::Auto => "auto",
            VirtioFsCache::Always => "always",
            VirtioFsCache::Never => "never",
            VirtioFsCache::Metadata => "metadata",
        }
    }
}

/// When the virtio-fs daemon references inodes by file handle instead of an `O_PATH`
/// descriptor (Kata's `virtio_fs_inode_file_handles`, virtiofsd's `--inode-file-handles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InodeFileHandles {
    /// Always `O_PATH` descriptors.
    Never,
    /// File handles where the filesystem supports them.
    Prefer,
    /// File handles only.
    Mandatory,
}

impl InodeFileHandles {
    /// The name virtiofsd's `--inode-file-handles` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            InodeFileHandles::Never => "never",
            InodeFileHandles::Prefer => "prefer",
            InodeFileHandles::Mandatory => "mandatory",
        }
    }
}

/// The VM-template role of this VM (Kata's VM factory).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TemplateRole {
    /// An ordinary VM.
    #[default]
    None,
    /// Booted to be saved as a template.
    BootToBeTemplate,
    /// Restored from a template.
    BootFromTemplate,
}

/// The settings the arch layer reads. Field defaults are Kata's (`HypervisorConfig.valid()`
/// and `config-settings.go.in`).
///
/// ```
/// use hvarch_arch::settings::HypervisorConfig;
/// let config: HypervisorConfig = toml::from_str(r#"
///     image_path = "/usr/share/kata-containers/kata-containers.img"
///     memory_mb = 4096
/// "#).unwrap();
/// assert_eq!(config.num_vcpus, 1);
/// assert_eq!(config.default_bridges, 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    /// The machine type; the backend's default when unset.
    pub machine_type: Option<String>,
    /// The QEMU binary; the backend's default path for the machine when unset.
    pub hypervisor_path: Option<PathBuf>,
    /// KVM (production) or TCG (CI, cross-arch).
    pub accelerator: Accelerator,
    /// Extra machine options appended to the backend's (Kata's `machine_accelerators`),
    /// in option syntax.
    pub machine_accelerators: String,
    /// Extra CPU features, in order (Kata's `cpu_features`, e.g. `pmu=off`).
    pub cpu_features: Vec<String>,
    /// The guest kernel.
    pub kernel_path: Option<PathBuf>,
    /// An initramfs (mutually exclusive with `image_path` in Kata).
    pub initrd_path: Option<PathBuf>,
    /// A rootfs image (NVDIMM on arm64/amd64 unless `disable_nvdimm`).
    pub image_path: Option<PathBuf>,
    /// Firmware for `-bios`.
    pub firmware_path: Option<PathBuf>,
    /// pflash images (arm64: none or exactly two, UEFI code then vars).
    pub pflashes: Vec<PathBuf>,
    /// Extra kernel parameters (last, so they win in the guest).
    pub kernel_params: KernelParams,
    /// Debug kernel parameters and logs.
    pub debug: bool,
    /// vCPUs at boot.
    pub num_vcpus: u32,
    /// vCPU ceiling for hotplug; 0 = the backend's maximum.
    pub default_max_vcpus: u32,
    /// Boot memory in MiB.
    pub memory_mb: u64,
    /// Memory hotplug slots.
    pub memory_slots: u32,
    /// MiB added to `maxmem` beyond host memory (honoured on arm64 too; Kata 1.x ignored it).
    pub memory_offset_mb: u64,
    /// PCI bridges for hotplug (Kata caps it at 5).
    pub default_bridges: u32,
    /// PCIe root ports to cold-plug for hotplug.
    pub pcie_root_ports: u32,
    /// Do not put the rootfs image on an NVDIMM.
    pub disable_nvdimm: bool,
    /// Do not set `disable-modern` when running nested.
    pub disable_nesting_checks: bool,
    /// Do not use vhost-net.
    pub disable_vhost_net: bool,
    /// Add a vIOMMU (q35 only).
    pub iommu: bool,
    /// The host entropy source for virtio-rng.
    pub entropy_source: PathBuf,
    /// How block devices are attached.
    pub block_device_driver: BlockDriver,
    /// Give the SCSI controller an iothread.
    pub enable_iothreads: bool,
    /// Shared filesystem mechanism.
    pub shared_fs: SharedFs,
    /// The virtio-fs daemon binary (Kata's `virtio_fs_daemon`, e.g. virtiofsd), one started
    /// per volume when `shared_fs` is virtio-fs.
    pub virtio_fs_daemon: Option<PathBuf>,
    /// The daemon's caching policy.
    pub virtio_fs_cache: VirtioFsCache,
    /// When the daemon uses file handles for inodes; the daemon's default when unset.
    pub virtio_fs_inode_file_handles: Option<InodeFileHandles>,
    /// Arguments appended to the daemon's command line (Kata's `virtio_fs_extra_args`).
    pub virtio_fs_extra_args: Vec<String>,
    /// The virtqueue size of each `vhost-user-fs` device; QEMU's default when unset.
    pub virtio_fs_queue_size: Option<u16>,
    /// Share guest RAM with vhost-user storage daemons (Kata's `enable_vhost_user_store`;
    /// needs `hugepages`).
    pub enable_vhost_user_store: bool,
    /// QEMU's seccomp filter (`-sandbox`, Kata's `seccompsandbox`); none when unset.
    pub seccomp_sandbox: Option<Sandbox>,
    /// Back guest RAM with hugepages.
    pub hugepages: bool,
    /// Back guest RAM with files under this directory.
    pub file_backed_mem_root: Option<PathBuf>,
    /// Preallocate guest RAM.
    pub mem_prealloc: bool,
    /// Let guest memory be swapped (Kata's `enable_swap`; `mem-lock` is its negation).
    pub enable_swap: bool,
    /// VM template role.
    pub template: TemplateRole,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            machine_type: None,
            hypervisor_path: None,
            accelerator: Accelerator::Kvm,
            machine_accelerators: String::new(),
            cpu_features: Vec::new(),
            kernel_path: None,
            initrd_path: None,
            image_path: None,
            firmware_path: None,
            pflashes: Vec::new(),
            kernel_params: KernelParams::new(),
            debug: false,
            num_vcpus: 1,
            default_max_vcpus: 0,
            memory_mb: 2048,
            memory_slots: 10,
            memory_offset_mb: 0,
            default_bridges: 1,
            pcie_root_ports: 0,
            disable_nvdimm: false,
            disable_nesting_checks: false,
            disable_vhost_net: false,
            iommu: false,
            entropy_source: PathBuf::from("/dev/urandom"),
            block_device_driver: BlockDriver::VirtioScsi,
            enable_iothreads: false,
            shared_fs: SharedFs::VirtioFs9p,
            virtio_fs_daemon: None,
            virtio_fs_cache: VirtioFsCache::Auto,
            virtio_fs_inode_file_handles: None,
            virtio_fs_extra_args: Vec::new(),
            virtio_fs_queue_size: None,
            enable_vhost_user_store: false,
            seccomp_sandbox: None,
            hugepages: false,
            file_backed_mem_root: None,
            mem_prealloc: false,
            enable_swap: false,
            template: TemplateRole::None,
        }
    }
}

/// Kata's cap on `default_bridges`.
pub const MAX_PCI_BRIDGES: u32 = 5;
