//! The VMs the argv benchmarks render (shared by `argv` and `argv_allocs`): Kata's default
//! arm64 VM as hvarch assembles it (6 devices), and the same VM with 64 more devices: 16 PCIe
//! root ports (the most Kata allows) and 48 virtio-blk disks, each with its `-blockdev`.

use hvarch::{assemble, Accelerator, GuestArch, VmSpec};
use hvarch_arch::resources::BlockDrive;
use hvarch_devices::config::VmConfig;

fn spec() -> VmSpec {
    let mut spec = VmSpec::kata_default();
    spec.arch = Some(GuestArch::Aarch64);
    spec.hypervisor.accelerator = Accelerator::Tcg;
    spec.host_memory_mb = Some(16384);
    spec.host_cpus = Some(8);
    spec
}

/// Kata's default arm64 VM.
pub fn default_vm() -> VmConfig {
    assemble(&spec()).expect("assemble the default VM").config
}

/// The default VM with 64 more devices.
pub fn vm_64_devices() -> VmConfig {
    let mut spec = spec();
    spec.hypervisor.pcie_root_ports = 16;
    spec.block_drives = (0..48)
        .map(|i| BlockDrive {
            file: format!("/var/lib/images/disk{i}.img").into(),
            format: "raw".into(),
            id: format!("drive{i}"),
            read_only: false,
            share_rw: false,
            index: i,
        })
        .collect();
    assemble(&spec).expect("assemble the 64-device VM").config
}
