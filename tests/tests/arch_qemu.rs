//! The facade's assembled VMs against real QEMU (TCG, paused with `-S`): the built-in
//! default VM on each of the four architectures and every spec in `examples/`.
//!
//! Each spec is run as written except for what a test machine cannot provide:
//!
//! - `accelerator = "tcg"` (never KVM here) and `stopped = true` (`-S`);
//! - `runtime_dir` in a private temporary directory (sockets, pid file);
//! - files the spec names that do not exist here are replaced by temporary ones: the kernel
//!   (arm64: an empty file, which QEMU's `virt` loader takes as a raw image; x86_64: a
//!   16 KiB file holding just a Linux boot-protocol header, because the x86 loader checks
//!   for `HdrS` at load time even with `-S`; ppc64le and s390x: a minimal ELF64 of the
//!   machine, since `pseries` refuses anything else), the initrd (empty), the rootfs image (4 MiB of
//!   zeros: the NVDIMM is sized from it) and the UEFI variable store (a copy of
//!   `/usr/share/AAVMF/AAVMF_VARS.fd`, which must be writable);
//! - `enable_swap = true`, so QEMU gets no `-overcommit mem-lock=on`: locking would fault
//!   in the whole guest RAM (GiBs) of every test VM for nothing.
//!
//! QEMU must then answer QMP on the harness's socket *and* on the spec's own monitor
//! (`<runtime_dir>/qmp.sock`), report the machine type, as many vCPUs as `num_vcpus`, and
//! every `-device` id of the command line (PCI ones on the PCI buses too, CCW ones with the
//! device number of the command line).
//!
//! QEMU must also start without a single warning on stderr.
//!
//! Escaping, as for the device model's own proof: a ppc64le and an s390x VM whose runtime
//! directory and rootfs image have `,` and `=` in their paths start, QEMU opens the image
//! under exactly that name, and both sockets are where the spec says.

use std::path::Path;

use hvarch::{assemble, Assembled, GuestArch, Syntax, VmSpec};
use hvarch_tests::spec::runnable;
use hvarch_tests::{argv_devices, is_pci_driver, ArgDevice, QemuProcess, RawQmp, TempDir};
use serde_json::{json, Value};

/// The devices of Kata's default VM, in command-line order.
const DEFAULT_DEVICE_IDS: [&str; 6] = [
    "pci-bridge-0",
    "serial0",
    "console0",
    "scsi0",
    "rng0-dev",
    "channel0",
];

fn example(name: &str) -> VmSpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The device ids of `vm`'s command line, in order.
fn ids(vm: &Assembled) -> Vec<String> {
    argv_devices(&vm.argv(Syntax::Options).expect("argv"))
        .into_iter()
        .map(|d| d.id)
        .collect()
}

/// Starts `spec` (adapted) and checks what QEMU reports.
fn run_and_check(spec: VmSpec) -> Assembled {
    run_and_check_with(spec, |_, _| {}, |_, _| {})
}

/// [`run_and_check`], with `adjust` applied to the spec once it is runnable, and `more`
/// checks on the same running VM.
fn run_and_check_with(
    mut spec: VmSpec,
    adjust: impl FnOnce(&mut VmSpec, &TempDir),
    more: impl FnOnce(&mut RawQmp, &Assembled),
) -> Assembled {
    let dir = TempDir::new();
    runnable(&mut spec, &dir);
    adjust(&mut spec, &dir);
    let runtime = spec.runtime_dir();
    // QEMU is started directly here (not by `Vm::launch`): its runtime files need the dir.
    std::fs::create_dir_all(&runtime).expect("runtime dir");
    let vm = assemble(&spec).unwrap_or_else(|e| panic!("assemble {}: {e}", spec.id));
    let argv = vm.argv(Syntax::Options).expect("argv");
    let binary = vm.guest_arch.qemu_binary();
    assert!(argv[0].ends_with(binary), "{} is not {binary}", argv[0]);
    let process = QemuProcess::spawn_in(dir, binary, &argv[1..]);
    let mut qmp = process.raw_qmp();
    let context = format!(
        "{}: {}\nstderr:\n{}",
        spec.id,
        argv.join(" "),
        process.stderr()
    );

    let status = qmp.ok("query-status", json!({}));
    assert_eq!(status["status"], "prelaunch", "{context}");
    let target = qmp.ok("query-target", json!({}));
    let expected_target = match vm.guest_arch {
        GuestArch::Ppc64le => "ppc64",
        other => other.as_str(),
    };
    assert_eq!(target["arch"], expected_target, "{context}");

    // The machine: QOM type `<machine>-…-machine` (virt-10.0-machine, pc-q35-10.0-machine).
    let machine_type = qmp.qom_get("/machine", "type");
    let wanted = &vm.config.machine.machine_type;
    assert!(
        machine_type
            .as_str()
            .is_some_and(|t| t.contains(wanted.as_str())),
        "machine {machine_type} is not {wanted}: {context}"
    );
    let machines = qmp.ok("query-machines", json!({}));
    assert!(
        machines
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == *wanted || m["alias"] == *wanted),
        "{context}"
    );
    if vm.config.machine.options.get("nvdimm") == Some("on") {
        assert_eq!(
            qmp.qom_get("/machine", "nvdimm"),
            Value::Bool(true),
            "{context}"
        );
    }

    // vCPUs present at boot.
    let cpus = qmp.ok("query-cpus-fast", json!({}));
    assert_eq!(
        cpus.as_array().map(Vec::len),
        Some(spec.hypervisor.num_vcpus as usize),
        "{context}"
    );

    // Every device of the command line, the PCI ones on the PCI buses, the CCW ones with
    // their device numbers.
    let peripherals = qmp.peripheral_ids();
    let pci = qmp.pci_device_ids();
    let devices = argv_devices(&argv);
    assert!(!devices.is_empty());
    for ArgDevice { driver, id, devno } in &devices {
        assert!(
            peripherals.contains(id),
            "{driver} {id} not in {peripherals:?}: {context}"
        );
        if is_pci_driver(driver) {
            assert!(
                pci.contains(id),
                "{driver} {id} not in query-pci {pci:?}: {context}"
            );
        }
        if driver.ends_with("-ccw") {
            let given = devno
                .as_deref()
                .unwrap_or_else(|| panic!("{driver} {id} has no devno: {context}"));
            let path = format!("/machine/peripheral/{id}");
            assert_eq!(qmp.qom_get(&path, "devno"), given, "{id}: {context}");
        }
    }
    more(&mut qmp, &vm);

    // The spec's own QMP monitor answers too.
    let mut own = RawQmp::connect(&runtime.join("qmp.sock"));
    assert_eq!(own.ok("query-status", json!({}))["status"], "prelaunch");
    assert!(own.greeting()["QMP"]["version"]["qemu"]["major"].as_u64() >= Some(7));
    // Started cleanly: not one warning (arm64 once warned about Kata's `driftfix=slew`,
    // pseries under TCG about each spectre/meltdown capability only KVM has).
    assert_eq!(process.stderr(), "", "{context}");
    drop(process);
    vm
}

#[test]
fn default_vm_arm64() {
    let mut spec = VmSpec::kata_default();
    spec.arch = Some(GuestArch::Aarch64);
    let vm = run_and_check(spec);
    assert_eq!(ids(&vm), DEFAULT_DEVICE_IDS);
}

#[test]
fn default_vm_x86_64() {
    let mut spec = VmSpec::kata_default();
    spec.arch = Some(GuestArch::X86_64);
    run_and_check(spec);
}

#[test]
fn example_arm64_initrd() {
    let vm = run_and_check(example("arm64-initrd.toml"));
    assert!(vm.config.machine.options.get("nvdimm").is_none());
}

#[test]
fn example_arm64_image_uefi() {
    let vm = run_and_check(example("arm64-image-uefi.toml"));
    assert_eq!(vm.config.machine.options.get("nvdimm"), Some("on"));
    assert_eq!(vm.config.pflash.len(), 2);
}

#[test]
fn example_x86_64_q35_root_ports() {
    let vm = run_and_check(example("x86_64-q35-root-ports.toml"));
    let ids = ids(&vm);
    for port in ["rp0", "rp1", "rp2", "rp3"] {
        assert!(ids.contains(&port.to_owned()));
    }
}

#[test]
fn default_vm_ppc64le() {
    let mut spec = VmSpec::kata_default();
    spec.arch = Some(GuestArch::Ppc64le);
    let vm = run_and_check(spec);
    assert_eq!(vm.config.machine.machine_type, "pseries");
    assert_eq!(ids(&vm), DEFAULT_DEVICE_IDS);
}

#[test]
fn default_vm_s390x() {
    let mut spec = VmSpec::kata_default();
    spec.arch = Some(GuestArch::S390x);
    let vm = run_and_check_with(
        spec,
        |_, _| {},
        |qmp, _| {
            // Guest RAM is the machine's memory backend (s390x has no NUMA).
            assert_eq!(qmp.qom_get("/machine", "memory-backend"), "/objects/dimm1");
        },
    );
    // No bridge device on s390x: the CCW bridge is bookkeeping.
    assert_eq!(ids(&vm), DEFAULT_DEVICE_IDS[1..]);
    assert_eq!(vm.config.machine.machine_type, "s390-ccw-virtio");
}

#[test]
fn example_ppc64le_pseries_image() {
    let vm = run_and_check_with(
        example("ppc64le-pseries-image.toml"),
        |_, _| {},
        |qmp, vm| {
            // The rootfs image is a virtio-blk disk: its node is open.
            let node = vm
                .config
                .devices
                .iter()
                .find_map(|d| match d {
                    hvarch::hvarch_devices::Device::Block(b) => Some(b.backend.node_name.clone()),
                    _ => None,
                })
                .expect("an image disk");
            assert!(qmp.block_node_names().contains(&node), "{node}");
        },
    );
    assert!(vm.config.machine.options.get("nvdimm").is_none());
    let ids = ids(&vm);
    for bridge in ["pci-bridge-0", "pci-bridge-1"] {
        assert!(ids.contains(&bridge.to_owned()), "{ids:?}");
    }
}

#[test]
fn example_s390x_ccw() {
    run_and_check_with(
        example("s390x-ccw.toml"),
        |_, _| {},
        |qmp, _| {
            // The balloon the spec put on CCW got the number after the 9p share's.
            assert_eq!(
                qmp.qom_get("/machine/peripheral/balloon0", "devno"),
                "fe.0.0005"
            );
        },
    );
}

/// A runtime directory and a rootfs image whose paths hold `,` and `=`: QEMU opens the image
/// under exactly that name and creates both sockets where the spec says (the spec's own QMP
/// monitor, at the odd path, answers in [`run_and_check_with`]).
fn odd_paths(arch: GuestArch) {
    let odd = std::cell::RefCell::new(None);
    let mut spec = VmSpec::kata_default();
    spec.arch = Some(arch);
    spec.id = format!("odd-{arch}");
    run_and_check_with(
        spec,
        |spec, dir| {
            let run = dir.join("run,dir=1");
            std::fs::create_dir_all(&run).expect("odd runtime dir");
            let image = dir.join("root,fs=1.img");
            std::fs::File::create(&image)
                .and_then(|f| f.set_len(4 << 20))
                .expect("odd image");
            spec.runtime_dir = Some(run.clone());
            spec.hypervisor.initrd_path = None;
            spec.hypervisor.image_path = Some(image.clone());
            *odd.borrow_mut() = Some((image, run.join("console.sock")));
        },
        |qmp, _| {
            let (image, console) = odd.borrow().clone().expect("adjusted");
            let image = image.to_str().expect("utf-8 path");
            let nodes = qmp.ok("query-named-block-nodes", json!({}));
            assert!(
                nodes
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|n| n["file"] == image && n["drv"] == "file"),
                "no node opened {image}: {nodes}"
            );
            assert!(console.exists(), "no socket at {}", console.display());
            let chardevs = qmp.ok("query-chardev", json!({}));
            let filename = chardevs
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["label"] == "charconsole0")
                .and_then(|c| c["filename"].as_str().map(str::to_owned))
                .unwrap_or_else(|| panic!("no charconsole0: {chardevs}"));
            assert!(filename.contains("run,dir=1/console.sock"), "{filename}");
        },
    );
}

#[test]
fn odd_paths_reach_qemu_ppc64le() {
    odd_paths(GuestArch::Ppc64le);
}

#[test]
fn odd_paths_reach_qemu_s390x() {
    odd_paths(GuestArch::S390x);
}

/// Why ppc64le tests need an ELF kernel: `pseries` refuses anything else.
#[test]
fn pseries_refuses_a_non_elf_kernel() {
    let dir = TempDir::new();
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, b"not an ELF").expect("write kernel");
    let stderr = QemuProcess::expect_start_failure(
        GuestArch::Ppc64le.qemu_binary(),
        &hvarch_tests::args(&[
            "-machine",
            "pseries,accel=tcg",
            "-nodefaults",
            "-nographic",
            "-S",
            "-kernel",
            kernel.to_str().expect("utf-8 path"),
        ]),
    );
    assert!(stderr.contains("Failed to load ELF"), "{stderr}");
}

/// Every example in `examples/` is covered by a test above.
#[test]
fn every_example_is_tested() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "arm64-image-uefi.toml",
            "arm64-initrd.toml",
            "ppc64le-pseries-image.toml",
            "s390x-ccw.toml",
            "x86_64-q35-root-ports.toml"
        ]
    );
}
