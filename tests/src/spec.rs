//! Specs made runnable on a test machine: QEMU under TCG (never KVM here), paused, with
//! temporary stand-ins for the files a spec names:
//!
//! - the kernel: arm64 takes an empty file as a raw image; x86_64 needs a 16 KiB file with
//!   a Linux boot-protocol header, because its loader checks for `HdrS` even with `-S`;
//!   `pseries` refuses anything but an ELF ("The image is not ELF"), so ppc64le and s390x
//!   get a minimal ELF64 of their machine ([`minimal_elf64`]);
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
        // pseries adds its kernel_addr (4 MiB) to the ELF's address, and warns unless the
        // result is kernel_addr itself: a Linux vmlinux is linked at physical address 0.
        GuestArch::Ppc64le => minimal_elf64(EM_PPC64, Endian::Little, 0),
        GuestArch::S390x => minimal_elf64(EM_S390, Endian::Big, 0x40_0000),
        _ => Vec::new(),
    }
}

/// ELF `e_machine` of 64-bit PowerPC.
pub const EM_PPC64: u16 = 21;
/// ELF `e_machine` of s390 (s390x is its 64-bit class).
pub const EM_S390: u16 = 22;

/// Byte order of an ELF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endian {
    /// Least significant byte first (ppc64le).
    Little,
    /// Most significant byte first (s390x).
    Big,
}

/// The smallest ELF64 executable QEMU's loaders take: the 64-byte header, one `PT_LOAD`
/// program header, and 16 zero bytes loaded (read and execute) at `load_addr`, which is also
/// the entry point. Enough for a VM that never runs (`-S`).
pub fn minimal_elf64(machine: u16, endian: Endian, load_addr: u64) -> Vec<u8> {
    const EHDR: u16 = 64;
    const PHDR: u16 = 56;
    const CODE: u64 = 16;
    let mut elf = Vec::with_capacity(usize::from(EHDR + PHDR) + CODE as usize);
    let u16b = |v: u16| match endian {
        Endian::Little => v.to_le_bytes(),
        Endian::Big => v.to_be_bytes(),
    };
    let u32b = |v: u32| match endian {
        Endian::Little => v.to_le_bytes(),
        Endian::Big => v.to_be_bytes(),
    };
    let u64b = |v: u64| match endian {
        Endian::Little => v.to_le_bytes(),
        Endian::Big => v.to_be_bytes(),
    };
    // e_ident: magic, ELFCLASS64, data encoding, EV_CURRENT, System V ABI, padding.
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, if endian == Endian::Little { 1 } else { 2 }, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&u16b(2)); // e_type: ET_EXEC
    elf.extend_from_slice(&u16b(machine));
    elf.extend_from_slice(&u32b(1)); // e_version
    elf.extend_from_slice(&u64b(load_addr)); // e_entry
    elf.extend_from_slice(&u64b(u64::from(EHDR))); // e_phoff
    elf.extend_from_slice(&u64b(0)); // e_shoff: no sections
    elf.extend_from_slice(&u32b(0)); // e_flags
    elf.extend_from_slice(&u16b(EHDR)); // e_ehsize
    elf.extend_from_slice(&u16b(PHDR)); // e_phentsize
    elf.extend_from_slice(&u16b(1)); // e_phnum
    elf.extend_from_slice(&u16b(64)); // e_shentsize
    elf.extend_from_slice(&u16b(0)); // e_shnum
    elf.extend_from_slice(&u16b(0)); // e_shstrndx
                                     // The program header: PT_LOAD, R+X, the code right after the headers.
    elf.extend_from_slice(&u32b(1)); // p_type
    elf.extend_from_slice(&u32b(5)); // p_flags
    elf.extend_from_slice(&u64b(u64::from(EHDR + PHDR))); // p_offset
    elf.extend_from_slice(&u64b(load_addr)); // p_vaddr
    elf.extend_from_slice(&u64b(load_addr)); // p_paddr
    elf.extend_from_slice(&u64b(CODE)); // p_filesz
    elf.extend_from_slice(&u64b(CODE)); // p_memsz
    elf.extend_from_slice(&u64b(0x1000)); // p_align
    elf.resize(elf.len() + CODE as usize, 0);
    elf
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_elf64_headers() {
        for (machine, endian) in [(EM_PPC64, Endian::Little), (EM_S390, Endian::Big)] {
            let elf = minimal_elf64(machine, endian, 0x1000);
            assert_eq!(elf.len(), 64 + 56 + 16);
            assert_eq!(&elf[..4], b"\x7fELF");
            assert_eq!(elf[4], 2, "ELFCLASS64");
            let read16 = |at: usize| {
                let bytes = [elf[at], elf[at + 1]];
                match endian {
                    Endian::Little => u16::from_le_bytes(bytes),
                    Endian::Big => u16::from_be_bytes(bytes),
                }
            };
            assert_eq!(elf[5], if endian == Endian::Little { 1 } else { 2 });
            assert_eq!(read16(16), 2, "ET_EXEC");
            assert_eq!(read16(18), machine);
            assert_eq!(read16(56), 1, "one program header");
        }
        assert_eq!(fake_kernel(GuestArch::S390x)[18..20], [0, 22]);
        assert_eq!(fake_kernel(GuestArch::Ppc64le)[18..20], [21, 0]);
        assert!(fake_kernel(GuestArch::Aarch64).is_empty());
    }
}
