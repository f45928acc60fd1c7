//! Kata's own configuration files (`examples/kata/`) read by `hvarch::kata_config` and run
//! by real QEMU (TCG, paused with `-S`; never KVM), and the round trip: the VM of a Kata
//! file and the VM of the equivalent hvarch spec render the same command line.
//!
//! Each example is read as written, except for what a test machine cannot provide, changed
//! the way a user of `hvarch cmdline --kata-config FILE --accel tcg` would:
//!
//! - in the file: `kernel` and `image` become the test guest's kernel and initramfs
//!   (`initrd`) on arm64 (`HVARCH_GUEST_DIR`), and on x86_64, where there is no test guest,
//!   a 16 KiB kernel stand-in with a boot-protocol header (QEMU checks it at load time even
//!   with `-S`) and an empty initrd;
//! - on the spec: TCG, paused, a private runtime directory, and `enable_swap` (no
//!   `-overcommit mem-lock=on`: locking would fault in 2 GiB of shared memory for nothing).
//!
//! QEMU must then report the machine, the vCPUs and the memory the file asks for, the
//! virtio-fs shared memory backend, and every device of the command line.

use std::path::{Path, PathBuf};

use hvarch::kata_config::{self, KataOptions, KataSpec};
use hvarch::{assemble, Accelerator, GuestArch, Syntax, VmSpec};
use hvarch_tests::spec::fake_kernel;
use hvarch_tests::{
    argv_devices, guest, is_pci_driver, ArgDevice, QemuProcess, TempDir, QEMU_AARCH64, QEMU_X86_64,
};
use serde_json::{json, Value};

const ARM64: &str = "configuration-qemu-arm64.toml";
const X86_64: &str = "configuration-qemu-x86_64.toml";
/// The image line both examples have.
const IMAGE_LINE: &str = "image = \"/usr/share/kata-containers/kata-containers.img\"";
/// The kernel line both examples have.
const KERNEL_LINE: &str = "kernel = \"/usr/share/kata-containers/vmlinux.container\"";

fn example_text(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/kata")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Fixed host facts, so the command line does not depend on the test machine.
fn options(id: &str) -> KataOptions {
    KataOptions {
        host_cpus: Some(2),
        host_memory_mb: Some(4096),
        ..KataOptions::new(id)
    }
}

/// `text` with `line` replaced by `with` (which must be there: the test would otherwise
/// silently run the packaged paths).
fn replace_line(text: &str, line: &str, with: &str) -> String {
    assert!(text.contains(line), "{line} is not in the example");
    text.replace(line, with)
}

/// The example read with its kernel and rootfs pointed at bootable files in `dir`.
fn read_pointed_at_test_guest(name: &str, dir: &TempDir) -> KataSpec {
    let (kernel, initrd): (PathBuf, PathBuf) = if name == ARM64 {
        let files = guest::find(&guest::guest_dir()).unwrap_or_else(|e| panic!("{e}"));
        let initramfs = guest::initramfs(&files).unwrap_or_else(|e| panic!("{e}"));
        (files.kernel, initramfs)
    } else {
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, fake_kernel(GuestArch::X86_64)).expect("write the kernel");
        let initrd = dir.join("initrd.img");
        std::fs::write(&initrd, b"").expect("write the initrd");
        (kernel, initrd)
    };
    let text = replace_line(
        &example_text(name),
        KERNEL_LINE,
        &format!("kernel = {:?}", kernel.display().to_string()),
    );
    let text = replace_line(
        &text,
        IMAGE_LINE,
        &format!("initrd = {:?}", initrd.display().to_string()),
    );
    kata_config::from_str(&text, &options(name.trim_end_matches(".toml")))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// TCG (`--accel tcg`), paused, private runtime directory, no memory locking.
fn runnable(spec: &mut VmSpec, dir: &TempDir) {
    spec.hypervisor.accelerator = Accelerator::Tcg;
    spec.stopped = true;
    spec.hypervisor.enable_swap = true;
    let run = dir.join("run");
    std::fs::create_dir_all(&run).expect("runtime dir");
    spec.runtime_dir = Some(run);
}

/// Starts the example and checks what QEMU reports against what the file asked for.
fn run_example(name: &str, binary: &str, machine: &str) -> Vec<String> {
    let dir = TempDir::new();
    let kata = read_pointed_at_test_guest(name, &dir);
    let mut spec = kata.spec.clone();
    runnable(&mut spec, &dir);
    let vm = assemble(&spec).unwrap_or_else(|e| panic!("assemble {name}: {e}"));
    let argv = vm.argv(Syntax::Options).expect("argv");
    assert!(argv[0].ends_with(binary), "{}", argv[0]);
    let process = QemuProcess::spawn_in(dir, binary, &argv[1..]);
    let mut qmp = process.raw_qmp();
    let context = format!("{name}: {}\nstderr:\n{}", argv.join(" "), process.stderr());

    assert_eq!(
        qmp.ok("query-status", json!({}))["status"],
        "prelaunch",
        "{context}"
    );
    let machine_type = qmp.qom_get("/machine", "type");
    assert!(
        machine_type.as_str().is_some_and(|t| t.contains(machine)),
        "machine {machine_type} is not {machine}: {context}"
    );
    // default_vcpus = 1; default_maxvcpus = 0 is the host's 2 CPUs.
    let cpus = qmp.ok("query-cpus-fast", json!({}));
    assert_eq!(cpus.as_array().map(Vec::len), Some(1), "{context}");
    assert_eq!(vm.max_vcpus, 2);
    // default_memory = 2048, on the shared file backend virtio-fs needs.
    let memory = qmp.ok("query-memory-size-summary", json!({}));
    assert_eq!(memory["base-memory"], json!(2048u64 << 20), "{context}");
    assert_eq!(qmp.qom_get("/objects/dimm1", "share"), Value::Bool(true));
    assert_eq!(qmp.qom_get("/objects/dimm1", "mem-path"), json!("/dev/shm"));
    // Every device of the command line, the PCI ones on the PCI buses.
    let peripherals = qmp.peripheral_ids();
    let pci = qmp.pci_device_ids();
    let devices = argv_devices(&argv);
    for ArgDevice { driver, id, .. } in &devices {
        assert!(peripherals.contains(id), "{driver} {id}: {context}");
        if is_pci_driver(driver) {
            assert!(pci.contains(id), "{driver} {id} not on PCI: {context}");
        }
    }
    // The file's devices: one bridge, the console, virtio-scsi, the entropy device.
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    for id in ["pci-bridge-0", "console0", "scsi0", "rng0-dev", "channel0"] {
        assert!(ids.contains(&id), "{id} missing: {context}");
    }
    drop(process);
    argv
}

#[test]
fn arm64_example_starts_under_tcg() {
    let argv = run_example(ARM64, QEMU_AARCH64, "virt");
    let after = |flag: &str| argv[argv.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert_eq!(after("-cpu"), "max,pmu=off");
    assert_eq!(after("-machine"), "virt,accel=tcg,usb=off,gic-version=3");
    assert!(
        after("-append").ends_with("scsi_mod.scan=none"),
        "{}",
        after("-append")
    );
}

#[test]
fn x86_64_example_starts_under_tcg() {
    let argv = run_example(X86_64, QEMU_X86_64, "q35");
    let after = |flag: &str| argv[argv.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert_eq!(after("-cpu"), "max,pmu=off");
    assert_eq!(after("-machine"), "q35,accel=tcg");
}

/// The hvarch spec that says what the arm64 example says (host facts as [`options`]).
const ARM64_EQUIVALENT: &str = r#"
    arch = "aarch64"
    id = "round-trip"
    host_cpus = 2
    host_memory_mb = 4096

    [hypervisor]
    hypervisor_path = "/usr/bin/qemu-system-aarch64"
    machine_type = "virt"
    cpu_features = ["pmu=off"]
    kernel_path = "/usr/share/kata-containers/vmlinux.container"
    num_vcpus = 1
    default_max_vcpus = 2
    memory_mb = 2048
    memory_slots = 10
    default_bridges = 1
    disable_nvdimm = true
    block_device_driver = "virtio-scsi"
    shared_fs = "virtio-fs"
    virtio_fs_daemon = "/usr/libexec/kata-qemu/virtiofsd"
    virtio_fs_cache = "auto"
    virtio_fs_queue_size = 1024
    virtio_fs_extra_args = ["--thread-pool-size=1", "--announce-submounts"]
    kernel_params = "systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket scsi_mod.scan=none"
"#;

/// The hvarch spec that says what the x86_64 example says.
const X86_64_EQUIVALENT: &str = r#"
    arch = "x86_64"
    id = "round-trip"
    host_cpus = 2
    host_memory_mb = 4096

    [hypervisor]
    hypervisor_path = "/usr/bin/qemu-system-x86_64"
    machine_type = "q35"
    cpu_features = ["pmu=off"]
    kernel_path = "/usr/share/kata-containers/vmlinux.container"
    num_vcpus = 1
    default_max_vcpus = 2
    memory_mb = 2048
    shared_fs = "virtio-fs"
    virtio_fs_daemon = "/usr/libexec/virtiofsd"
    virtio_fs_queue_size = 1024
    virtio_fs_extra_args = ["--thread-pool-size=1", "--announce-submounts"]
    kernel_params = "systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket scsi_mod.scan=none"
"#;

/// Both examples and their hvarch equivalents (the packaged image replaced by a stand-in
/// in both, so the NVDIMM can be sized) give the same spec and the same command line.
#[test]
fn kata_files_and_equivalent_specs_render_the_same_argv() {
    for (name, equivalent) in [(ARM64, ARM64_EQUIVALENT), (X86_64, X86_64_EQUIVALENT)] {
        let image = hvarch::hvarch_arch::testing::TempImage::new("kata-containers.img", 4 << 20);
        let image_line = format!("image = {:?}", image.path().display().to_string());
        let text = replace_line(&example_text(name), IMAGE_LINE, &image_line);
        let from_kata = kata_config::from_str(&text, &options("round-trip"))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .spec;
        let mut from_spec: VmSpec =
            toml::from_str(equivalent).unwrap_or_else(|e| panic!("{name}: {e}"));
        from_spec.hypervisor.image_path = Some(image.path().to_path_buf());
        assert_eq!(from_kata, from_spec, "{name}");
        let argv = |spec: &VmSpec| assemble(spec).unwrap().argv(Syntax::Options).unwrap();
        let (kata_argv, spec_argv) = (argv(&from_kata), argv(&from_spec));
        assert_eq!(kata_argv, spec_argv, "{name}");
        // The argv is Kata's: the rootfs where Kata puts it.
        let joined = kata_argv.join(" ");
        if name == ARM64 {
            assert!(joined.contains("root=/dev/vda1"), "{joined}");
        } else {
            assert!(joined.contains("nvdimm,id=nv0"), "{joined}");
        }
    }
}
