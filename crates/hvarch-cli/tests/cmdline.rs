//! `hvarch cmdline` as a user runs it: every example in every format, the built-in default
//! VM, and clear failures (non-zero exit, message naming the file and the field).

mod common;

use common::{examples_dir, hvarch};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FORMATS: [&str; 3] = ["shell", "lines", "json"];

/// A private scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("hvarch-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The example spec `name`, as a path `hvarch` can assemble here: the NVDIMM example is
/// sized from its image, so it gets a copy pointing at a scratch image.
fn example_path(name: &str, scratch: &Scratch) -> PathBuf {
    let path = examples_dir().join(name);
    let text = std::fs::read_to_string(&path).expect("read example");
    let image = "/usr/share/kata-containers/kata-containers.img";
    if text.contains("image_path") && !Path::new(image).exists() {
        let fake = scratch.write("rootfs.img", &"\0".repeat(1 << 20));
        let fake = fake.to_str().expect("utf-8 temp path");
        return scratch.write(name, &text.replace(image, fake));
    }
    path
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "hvarch failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8 output")
}

/// What a POSIX shell makes of `line` as words.
fn shell_words(line: &str) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("for a in {line}; do printf '%s\\0' \"$a\"; done"))
        .output()
        .expect("run sh");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .split_terminator('\0')
        .map(str::to_owned)
        .collect()
}

/// The argv printed in each format; all three agree.
fn argv_in_every_format(args: &[&str]) -> Vec<String> {
    let mut results = Vec::new();
    for format in FORMATS {
        let mut full = vec!["cmdline", "--format", format];
        full.extend_from_slice(args);
        let text = stdout(&hvarch(&full));
        let argv: Vec<String> = match format {
            "json" => serde_json::from_str(text.trim_end()).expect("a JSON array of strings"),
            "lines" => text.lines().map(str::to_owned).collect(),
            _ => {
                assert_eq!(text.lines().count(), 1, "one shell line: {text}");
                shell_words(text.trim_end())
            }
        };
        results.push(argv);
    }
    assert_eq!(results[0], results[1], "shell and lines differ");
    assert_eq!(results[1], results[2], "lines and json differ");
    results.remove(2)
}

fn value_after(argv: &[String], flag: &str) -> String {
    let i = argv.iter().position(|a| a == flag).expect(flag);
    argv[i + 1].clone()
}

#[test]
fn every_example_in_every_format() {
    let scratch = Scratch::new("examples");
    let cases = [
        (
            "arm64-initrd.toml",
            "qemu-system-aarch64",
            "virt,accel=kvm,usb=off,gic-version=host",
        ),
        (
            "arm64-image-uefi.toml",
            "qemu-system-aarch64",
            "virt,accel=kvm,usb=off,gic-version=host,nvdimm=on",
        ),
        (
            "x86_64-q35-root-ports.toml",
            "qemu-system-x86_64",
            "q35,accel=kvm,kernel_irqchip=on",
        ),
        (
            "ppc64le-pseries-image.toml",
            "qemu-system-ppc64",
            "pseries,accel=kvm,usb=off",
        ),
        (
            "s390x-ccw.toml",
            "qemu-system-s390x",
            "s390-ccw-virtio,accel=kvm,memory-backend=dimm1",
        ),
    ];
    for (name, binary, machine) in cases {
        let path = example_path(name, &scratch);
        let argv = argv_in_every_format(&[path.to_str().expect("utf-8 path")]);
        assert!(argv[0].ends_with(binary), "{name}: {argv:?}");
        assert_eq!(value_after(&argv, "-machine"), machine, "{name}");
        // The kernel command line holds spaces: one argument in every format.
        assert!(value_after(&argv, "-append").contains(" panic=1 nr_cpus="));
    }
}

#[test]
fn arch_and_accel_override_the_spec() {
    let scratch = Scratch::new("override");
    let path = example_path("arm64-initrd.toml", &scratch);
    let argv = argv_in_every_format(&["--accel", "tcg", path.to_str().expect("utf-8")]);
    assert_eq!(
        value_after(&argv, "-machine"),
        "virt,accel=tcg,usb=off,gic-version=3"
    );
    assert_eq!(value_after(&argv, "-cpu"), "max,pmu=off");
    let argv = argv_in_every_format(&["--arch", "x86_64", path.to_str().expect("utf-8")]);
    assert!(argv[0].ends_with("qemu-system-x86_64"));
}

#[test]
fn default_vm_without_a_spec() {
    for (arch, binary, machine) in [
        (
            "aarch64",
            "qemu-system-aarch64",
            "virt,accel=tcg,usb=off,gic-version=3",
        ),
        ("x86_64", "qemu-system-x86_64", "q35,accel=tcg"),
        (
            "ppc64le",
            "qemu-system-ppc64",
            "pseries,accel=tcg,usb=off,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,\
             cap-ccf-assist=off",
        ),
        (
            "s390x",
            "qemu-system-s390x",
            "s390-ccw-virtio,accel=tcg,memory-backend=dimm1",
        ),
    ] {
        let argv = argv_in_every_format(&["--arch", arch, "--accel", "tcg"]);
        assert!(argv[0].ends_with(binary));
        assert_eq!(value_after(&argv, "-machine"), machine);
        assert_eq!(value_after(&argv, "-name"), "sandbox-default");
        assert_eq!(value_after(&argv, "-m").split(',').next(), Some("2G"));
        assert_eq!(value_after(&argv, "-smp").split(',').next(), Some("1"));
        assert!(argv.contains(&"-initrd".to_owned()));
    }
    // No --arch: the host's architecture.
    let argv = argv_in_every_format(&[]);
    let native = match std::env::consts::ARCH {
        "aarch64" => "qemu-system-aarch64",
        _ => "qemu-system-x86_64",
    };
    assert!(argv[0].ends_with(native));
}

fn failure(args: &[&str]) -> String {
    let output = hvarch(args);
    assert!(!output.status.success(), "hvarch {args:?} succeeded");
    assert_eq!(output.status.code(), Some(1), "hvarch {args:?}");
    assert!(output.stdout.is_empty());
    String::from_utf8(output.stderr).expect("utf-8 stderr")
}

#[test]
fn missing_spec_file() {
    let err = failure(&["cmdline", "/nonexistent/vm.toml"]);
    assert!(
        err.starts_with("hvarch: /nonexistent/vm.toml: cannot read spec file"),
        "{err}"
    );
}

#[test]
fn bad_specs_name_the_file_and_field() {
    let scratch = Scratch::new("bad");
    let cases = [
        ("toml.toml", "id = \"a\"\n[hypervisor\n", "invalid spec"),
        ("unknown.toml", "id = \"a\"\n[hypervisor]\nnum_vcpu = 2\n", "num_vcpu"),
        ("type.toml", "id = \"a\"\n[hypervisor]\nmemory_mb = \"lots\"\n", "memory_mb"),
        ("arch.toml", "arch = \"riscv64\"\nid = \"a\"\n", "riscv64"),
        ("noid.toml", "[hypervisor]\nnum_vcpus = 1\n", "`id`"),
        (
            "zero.toml",
            "id = \"a\"\n[hypervisor]\nnum_vcpus = 0\nkernel_path = \"/k\"\ninitrd_path = \"/i\"\n",
            "`hypervisor.num_vcpus`: invalid value \"0\"",
        ),
        (
            "nokernel.toml",
            "id = \"a\"\n[hypervisor]\ninitrd_path = \"/i\"\n",
            "`hypervisor.kernel_path` is required",
        ),
        (
            "iommu.toml",
            "arch = \"aarch64\"\nid = \"a\"\n[hypervisor]\niommu = true\nkernel_path = \"/k\"\ninitrd_path = \"/i\"\n",
            "`hypervisor.iommu`: Arm64 architecture does not support vIOMMU",
        ),
    ];
    for (name, text, expected) in cases {
        let path = scratch.write(name, text);
        let path = path.to_str().expect("utf-8");
        let err = failure(&["cmdline", path]);
        assert!(
            err.starts_with(&format!("hvarch: {path}: ")),
            "{name}: {err}"
        );
        assert!(err.contains(expected), "{name}: {err:?} lacks {expected:?}");
    }
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["cmdline", "--arch", "riscv64"][..],
        &["cmdline", "--accel", "hvf"],
        &["cmdline", "--format", "yaml"],
    ] {
        let output = hvarch(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty());
    }
}

#[test]
fn a_kata_configuration_in_place_of_a_spec() {
    let scratch = Scratch::new("kata");
    let text = std::fs::read_to_string(examples_dir().join("kata/configuration-qemu-arm64.toml"))
        .expect("read the Kata example");
    // The rootfs image is an NVDIMM sized from the file: point it at a scratch image.
    let image = scratch.write("rootfs.img", &"\0".repeat(1 << 20));
    let text = text.replace(
        "/usr/share/kata-containers/kata-containers.img",
        image.to_str().expect("utf-8 temp path"),
    );
    let path = scratch.write("configuration.toml", &text);
    let path = path.to_str().expect("utf-8");
    let argv = argv_in_every_format(&["--kata-config", path, "--accel", "tcg"]);
    assert!(argv[0].ends_with("qemu-system-aarch64"), "{argv:?}");
    assert!(
        value_after(&argv, "-machine").starts_with("virt,accel=tcg,"),
        "{argv:?}"
    );
    assert!(value_after(&argv, "-kernel").ends_with("vmlinux.container"));

    // An unknown key is an error naming the file and the key, or with --lenient a warning.
    let typo = scratch.write(
        "typo.toml",
        &text.replace(
            "machine_type = \"virt\"",
            "machine_type = \"virt\"\ndefault_vcpu = 2",
        ),
    );
    let typo = typo.to_str().expect("utf-8");
    let err = failure(&["cmdline", "--kata-config", typo]);
    assert!(err.starts_with(&format!("hvarch: {typo}: ")), "{err}");
    assert!(err.contains("default_vcpu"), "{err}");
    let output = hvarch(&[
        "cmdline",
        "--accel",
        "tcg",
        "--lenient",
        "--kata-config",
        typo,
    ]);
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("hvarch: warning: ") && stderr.contains("default_vcpu"),
        "{stderr}"
    );

    // Not both a spec and a Kata file; --lenient only with a Kata file.
    for args in [
        &["cmdline", "--kata-config", path, path][..],
        &["cmdline", "--lenient"],
        &["run", "--lenient"],
    ] {
        let output = hvarch(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    }
}
