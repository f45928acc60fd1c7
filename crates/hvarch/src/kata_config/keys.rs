//! Every key of Kata's `[hypervisor.qemu]` table hvarch knows: its type (the Go field's, in
//! `katautils/config.go`'s `hypervisor` struct) and what hvarch does with it.
//!
//! The list covers Kata 3.x's template (`configuration-qemu.toml.in`) and the Go runtime's
//! struct, the keys of Kata 1.x/2.x that later disappeared (`enable_swap`, `use_vsock`,
//! `hotplug_vfio_on_root_bus`) and runtime-rs's `vm_rootfs_driver`.

use super::table::Type;

/// What hvarch does with a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Mapped onto the VM (see the module docs of [`super`]).
    Mapped,
    /// hvarch builds the VM without it: a warning when the file sets it to anything but
    /// Go's zero value (`""`, `false`, `0`, `[]`).
    Ignored(&'static str),
    /// No effect on the VM Kata's QEMU builds either (keys of other hypervisors, annotation
    /// allow-lists, settings of containers and of the guest agent): accepted silently.
    Inert,
}

/// A key of `[hypervisor.qemu]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) name: &'static str,
    pub(crate) ty: Type,
    pub(crate) role: Role,
}

const fn mapped(name: &'static str, ty: Type) -> Key {
    Key {
        name,
        ty,
        role: Role::Mapped,
    }
}

const fn ignored(name: &'static str, ty: Type, reason: &'static str) -> Key {
    Key {
        name,
        ty,
        role: Role::Ignored(reason),
    }
}

const fn inert(name: &'static str, ty: Type) -> Key {
    Key {
        name,
        ty,
        role: Role::Inert,
    }
}

const DUMP: &str = "hvarch does not dump guest memory when the guest panics (QMP \
                    `dump-guest-memory` on `Vm::qmp` does it on demand)";
const BLOCK_CACHE: &str = "hvarch's block hotplug sets no cache options";
const RATE: &str = "hvarch does not shape the host side of network interfaces";
const VFIO_PORT: &str = "hvarch's hotplug places VFIO devices by its own rules (bridge slots, \
                         then root ports)";

/// The keys of `[hypervisor.qemu]`.
pub(crate) const QEMU_KEYS: &[Key] = &[
    // Binaries and boot files.
    mapped("path", Type::Str),
    mapped("valid_hypervisor_paths", Type::StrList),
    mapped("kernel", Type::Str),
    mapped("initrd", Type::Str),
    mapped("image", Type::Str),
    mapped("rootfs_type", Type::Str),
    mapped("firmware", Type::Str),
    ignored(
        "firmware_volume",
        Type::Str,
        "split firmware volumes (confidential guests) are not modelled; use `firmware` or \
         `pflashes`",
    ),
    mapped("pflashes", Type::StrList),
    mapped("kernel_params", Type::Str),
    // Machine and CPU.
    mapped("machine_type", Type::Str),
    mapped("machine_accelerators", Type::Str),
    mapped("cpu_features", Type::Str),
    mapped("default_vcpus", Type::Number),
    mapped("default_maxvcpus", Type::U32),
    mapped("seccompsandbox", Type::Str),
    mapped("enable_debug", Type::Bool),
    mapped("disable_nesting_checks", Type::Bool),
    // Memory.
    mapped("default_memory", Type::U32),
    mapped("default_maxmemory", Type::U64),
    mapped("memory_slots", Type::U32),
    mapped("memory_offset", Type::U64),
    mapped("enable_mem_prealloc", Type::Bool),
    mapped("enable_hugepages", Type::Bool),
    mapped("file_mem_backend", Type::Str),
    mapped("enable_swap", Type::Bool),
    ignored(
        "enable_virtio_mem",
        Type::Bool,
        "hvarch plugs no virtio-mem device at boot",
    ),
    ignored(
        "reclaim_guest_freed_memory",
        Type::Bool,
        "hvarch adds no balloon with free page reporting",
    ),
    ignored("guest_memory_dump_path", Type::Str, DUMP),
    ignored("guest_memory_dump_paging", Type::Bool, DUMP),
    // Devices.
    mapped("default_bridges", Type::U32),
    mapped("pcie_root_port", Type::U32),
    ignored(
        "pcie_switch_port",
        Type::U32,
        "hvarch cold-plugs no PCIe switch ports",
    ),
    mapped("hot_plug_vfio", Type::Str),
    mapped("cold_plug_vfio", Type::Str),
    ignored("hotplug_vfio_on_root_bus", Type::Bool, VFIO_PORT),
    mapped("enable_iommu", Type::Bool),
    ignored(
        "enable_iommu_platform",
        Type::Bool,
        "hvarch does not set iommu_platform on virtio devices",
    ),
    mapped("entropy_source", Type::Str),
    mapped("disable_vhost_net", Type::Bool),
    mapped("use_vsock", Type::Bool),
    ignored("rx_rate_limiter_max_rate", Type::U64, RATE),
    ignored("tx_rate_limiter_max_rate", Type::U64, RATE),
    ignored(
        "use_legacy_serial",
        Type::Bool,
        "the console is always virtio-serial (hvc0)",
    ),
    mapped("extra_monitor_socket", Type::Str),
    // Block devices and the rootfs image.
    mapped("block_device_driver", Type::Str),
    mapped("block_device_aio", Type::Str),
    ignored("block_device_cache_set", Type::Bool, BLOCK_CACHE),
    ignored("block_device_cache_direct", Type::Bool, BLOCK_CACHE),
    ignored("block_device_cache_noflush", Type::Bool, BLOCK_CACHE),
    mapped("enable_iothreads", Type::Bool),
    ignored(
        "indep_iothreads",
        Type::U32,
        "hvarch adds no independent I/O threads",
    ),
    mapped("disable_image_nvdimm", Type::Bool),
    ignored(
        "vm_rootfs_driver",
        Type::Str,
        "hvarch picks the rootfs device from `disable_image_nvdimm`",
    ),
    mapped("enable_vhost_user_store", Type::Bool),
    ignored(
        "vhost_user_reconnect_timeout_sec",
        Type::U32,
        "hvarch's vhost-user chardevs do not reconnect",
    ),
    // Shared filesystems.
    mapped("shared_fs", Type::Str),
    mapped("virtio_fs_daemon", Type::Str),
    mapped("valid_virtio_fs_daemon_paths", Type::StrList),
    mapped("virtio_fs_cache", Type::Str),
    mapped("virtio_fs_cache_size", Type::U32),
    mapped("virtio_fs_queue_size", Type::U32),
    mapped("virtio_fs_extra_args", Type::StrList),
    mapped("virtio_fs_inode_file_handles", Type::Str),
    // Security.
    mapped("confidential_guest", Type::Bool),
    mapped("sev_snp_guest", Type::Bool),
    ignored(
        "rootless",
        Type::Bool,
        "QEMU runs as the calling user, not as a random unprivileged one",
    ),
    inert("disable_selinux", Type::Bool),
    inert("disable_guest_selinux", Type::Bool),
    inert("disable_seccomp", Type::Bool),
    // Containers, the agent and annotations: not part of the VM.
    inert("disable_block_device_use", Type::Bool),
    inert("msize_9p", Type::U32),
    inert("guest_hook_path", Type::Str),
    inert("enable_guest_swap", Type::Bool),
    inert("vhost_user_store_path", Type::Str),
    inert("valid_vhost_user_store_paths", Type::StrList),
    inert("enable_annotations", Type::StrList),
    inert("valid_entropy_sources", Type::StrList),
    inert("valid_file_mem_backends", Type::StrList),
    inert("prefetch_list_path", Type::Str),
    // Other hypervisors' keys in the shared struct: Kata's QEMU ignores them too.
    inert("jailer_path", Type::Str),
    inert("valid_jailer_paths", Type::StrList),
    inert("ctlpath", Type::Str),
    inert("valid_ctlpaths", Type::StrList),
    inert("hypervisor_loglevel", Type::U32),
    inert("remote_hypervisor_socket", Type::Str),
    inert("remote_hypervisor_timeout", Type::U32),
    inert("tdx_quote_generation_service_socket_port", Type::U32),
    inert("disk_rate_limiter_bw_max_rate", Type::I64),
    inert("disk_rate_limiter_bw_one_time_burst", Type::I64),
    inert("disk_rate_limiter_ops_max_rate", Type::I64),
    inert("disk_rate_limiter_ops_one_time_burst", Type::I64),
    inert("net_rate_limiter_bw_max_rate", Type::I64),
    inert("net_rate_limiter_bw_one_time_burst", Type::I64),
    inert("net_rate_limiter_ops_max_rate", Type::I64),
    inert("net_rate_limiter_ops_one_time_burst", Type::I64),
];

/// The keys of `[agent.kata]` hvarch reads (the others are ignored).
pub(crate) const AGENT_KEYS: &[(&str, Type)] = &[
    ("enable_debug", Type::Bool),
    ("enable_tracing", Type::Bool),
    ("debug_console_enabled", Type::Bool),
    ("cdh_api_timeout", Type::U32),
    ("kernel_modules", Type::StrList),
];

/// `(name, type)` of every key of `[hypervisor.qemu]`.
pub(crate) fn qemu_types() -> Vec<(&'static str, Type)> {
    QEMU_KEYS.iter().map(|k| (k.name, k.ty)).collect()
}
