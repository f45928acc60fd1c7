//! What the two minimal VMMs (`vmm`, `async_vmm`) share: their arguments, the guest's spec
//! and the disk they hot-plug.

use std::path::{Path, PathBuf};

use hvarch::hvarch_arch::resources::BlockDrive;
use hvarch::hvarch_arch::settings::{BlockDriver, SharedFs};
use hvarch::{Accelerator, GuestArch, VmSpec};

/// `KERNEL INITRAMFS WORKDIR`: the arm64 guest to boot and a directory to work in.
pub fn args() -> Result<(VmSpec, PathBuf), String> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [kernel, initramfs, work] = &args[..] else {
        return Err("usage: KERNEL INITRAMFS WORKDIR (an arm64 guest, booted under TCG)".into());
    };
    Ok((spec(kernel, initramfs, work), work.clone()))
}

/// An arm64 guest under TCG with 256 MiB and one PCIe root port for the disk.
fn spec(kernel: &Path, initramfs: &Path, work: &Path) -> VmSpec {
    let mut spec = VmSpec::new("vmm");
    spec.arch = Some(GuestArch::Aarch64);
    spec.runtime_dir = Some(work.join("run"));
    let h = &mut spec.hypervisor;
    h.accelerator = Accelerator::Tcg;
    h.kernel_path = Some(kernel.to_owned());
    h.initrd_path = Some(initramfs.to_owned());
    h.memory_mb = 256;
    h.pcie_root_ports = 1;
    h.block_device_driver = BlockDriver::VirtioBlk;
    h.shared_fs = SharedFs::None;
    h.enable_swap = true;
    spec
}

/// A 16 MiB raw disk in `work`.
pub fn disk(work: &Path) -> std::io::Result<BlockDrive> {
    let file = work.join("disk0.img");
    std::fs::File::create(&file)?.set_len(16 << 20)?;
    Ok(BlockDrive {
        file,
        format: "raw".into(),
        id: "disk0".into(),
        read_only: false,
        share_rw: false,
        index: 0,
    })
}
