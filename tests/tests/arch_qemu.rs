//! The facade's assembled VMs against real QEMU (TCG, paused with `-S`): the built-in
//! default VM on both architectures and every spec in `examples/`.
//!
//! Each spec is run as written except for what a test machine cannot provide:
//!
//! - `accelerator = "tcg"` (never KVM here) and `stopped = true` (`-S`);
//! - `runtime_dir` in a private temporary directory (sockets, pid file);
//! - files the spec names that do not exist here are replaced by temporary ones: the kernel
//!   (arm64: an empty file, which QEMU's `virt` loader takes as a raw image; x86_64: a
//!   16 KiB file holding just a Linux boot-protocol header, because the x86 loader checks
//!   for `HdrS` at load time even with `-S`), the initrd (empty), the rootfs image (4 MiB of
//!   zeros: the NVDIMM is sized from it) and the UEFI variable store (a copy of
//!   `/usr/share/AAVMF/AAVMF_VARS.fd`, which must be writable);
//! - `enable_swap = true`, so QEMU gets no `-overcommit mem-lock=on`: locking would fault
//!   in the whole guest RAM (GiBs) of every test VM for nothing.
//!
//! QEMU must then answer QMP on the harness's socket *and* on the spec's own monitor
//! (`<runtime_dir>/qmp.sock`), report the machine type, as many vCPUs as `num_vcpus`, and
//! every `-device` id of the command line (PCI ones on the PCI buses too).

use std::path::Path;

use hvarch::{assemble, Assembled, GuestArch, Syntax, VmSpec};
use hvarch_tests::spec::runnable;
use hvarch_tests::{
    argv_devices, is_pci_driver, QemuProcess, RawQmp, TempDir, QEMU_AARCH64, QEMU_X86_64,
};
use serde_json::{json, Value};

fn example(name: &str) -> VmSpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Starts `spec` (adapted) and checks what QEMU reports.
fn run_and_check(mut spec: VmSpec) -> Assembled {
    let dir = TempDir::new();
    runnable(&mut spec, &dir);
    let runtime = spec.runtime_dir();
    // QEMU is started directly here (not by `Vm::launch`): its runtime files need the dir.
    std::fs::create_dir_all(&runtime).expect("runtime dir");
    let vm = assemble(&spec).unwrap_or_else(|e| panic!("assemble {}: {e}", spec.id));
    let argv = vm.argv(Syntax::Options).expect("argv");
    let binary = match vm.guest_arch {
        GuestArch::Aarch64 => QEMU_AARCH64,
        GuestArch::X86_64 => QEMU_X86_64,
        other => panic!("no QEMU for {other}"),
    };
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
    if spec.hypervisor.image_path.is_some() && !spec.hypervisor.disable_nvdimm {
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

    // Every device of the command line, and the PCI ones on the PCI buses.
    let peripherals = qmp.peripheral_ids();
    let pci = qmp.pci_device_ids();
    let devices = argv_devices(&argv);
    assert!(!devices.is_empty());
    for (driver, id) in &devices {
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
    }

    // The spec's own QMP monitor answers too.
    let mut own = RawQmp::connect(&runtime.join("qmp.sock"));
    assert_eq!(own.ok("query-status", json!({}))["status"], "prelaunch");
    assert!(own.greeting()["QMP"]["version"]["qemu"]["major"].as_u64() >= Some(7));
    drop(process);
    vm
}

#[test]
fn default_vm_arm64() {
    let mut spec = VmSpec::kata_default();
    spec.arch = Some(GuestArch::Aarch64);
    let vm = run_and_check(spec);
    let ids: Vec<String> = argv_devices(&vm.argv(Syntax::Options).unwrap())
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(
        ids,
        [
            "pci-bridge-0",
            "serial0",
            "console0",
            "scsi0",
            "rng0-dev",
            "channel0"
        ]
    );
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
    let ids: Vec<String> = argv_devices(&vm.argv(Syntax::Options).unwrap())
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    for port in ["rp0", "rp1", "rp2", "rp3"] {
        assert!(ids.contains(&port.to_owned()));
    }
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
            "x86_64-q35-root-ports.toml"
        ]
    );
}
