//! Specs made runnable on a test machine: QEMU under TCG (never KVM here), paused, with
//! temporary stand-ins for the files a spec names:
//!
//! - the kernel: arm64 takes an empty file as a raw image; x86_64 needs a 16 KiB file with
//!   a Linux boot-protocol header, because its loader checks for `HdrS` even with `-S`;
//! - the initrd (empty), the rootfs image (4 MiB of zeros: the NVDIMM is sized from it) and
//!   the UEFI variable store (a copy of `/usr/share/AAVMF/AAVMF_VARS.fd`, which must be
//!   writable);
//! - `enable_swap = true`, so QEMU gets no `-overcommit mem-lock=on`: locking would fault in
//!   the whole guest RAM of every test VM for nothing.

use std::path::{Path, PathBuf};

use hvarch::{Accelerator, GuestArch, VmSpec};

use crate::TempDir;

/// The firmware code image of the UEFI example (package qemu-efi-aarch64).
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
/// The UEFI variable store template (copied per VM: pflash unit 1 is writable).
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// A kernel QEMU accepts at load time for `arch` (see the module docs).
pub fn fake_kernel(arch: GuestArch) -> Vec<u8> {
    match arch {
        GuestArch::X86_64 => {
            let mut image = vec![0u8; 16 << 10];
            image[0x1f1] = 1; // setup_sects
            image[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
            image[0x202..0x206].copy_from_slice(b"HdrS");
            image[0x206..0x208].copy_from_slice(&0x020f_u16.to_le_bytes()); // protocol 2.15
            image[0x211] = 1; // LOADED_HIGH
            image[0x22c..0x230].copy_from_slice(&0x7fff_ffff_u32.to_le_bytes()); // initrd_addr_max
            image
        }
        _ => Vec::new(),
    }
}

/// Makes `spec` runnable here: TCG, paused (`-S`), no memory locking, a runtime dir
/// `run` inside `dir`, and temporary stand-ins for the kernel, initrd, rootfs image and UEFI
/// variable store (see the module docs).
///
/// The runtime dir is not created: `Vm::launch` creates it (and so removes it whole); a
/// test that starts QEMU itself creates it first.
pub fn runnable(spec: &mut VmSpec, dir: &TempDir) {
    let arch = spec.guest_arch().expect("guest arch");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).expect("files dir");
    spec.runtime_dir = Some(dir.join("run"));
    spec.stopped = true;
    let h = &mut spec.hypervisor;
    h.accelerator = Accelerator::Tcg;
    h.enable_swap = true;
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let path = files.join(name);
        std::fs::write(&path, bytes).expect("write temp file");
        path
    };
    h.kernel_path = Some(write("vmlinux", &fake_kernel(arch)));
    if h.initrd_path.is_some() {
        h.initrd_path = Some(write("initrd.img", &[]));
    }
    if h.image_path.is_some() {
        h.image_path = Some(write("rootfs.img", &vec![0u8; 4 << 20]));
    }
    for flash in &mut h.pflashes {
        if flash.exists() && flash.as_path() != Path::new(AAVMF_VARS) {
            continue;
        }
        assert!(
            Path::new(AAVMF_CODE).exists(),
            "{AAVMF_CODE} is missing: install qemu-efi-aarch64 (cargo xtask setup)"
        );
        let copy = files.join("AAVMF_VARS.fd");
        std::fs::copy(AAVMF_VARS, &copy).expect("copy the UEFI variable store");
        *flash = copy;
    }
}
