//! The Kata configuration reader: every key, Kata's clamping rules, warnings and errors.

use std::path::Path;

use proptest::prelude::*;

use super::keys::{Role, QEMU_KEYS};
use super::table::Type;
use super::*;

/// A host of 8 CPUs and 16 GiB, so clamping does not depend on the test machine.
fn opts() -> KataOptions {
    KataOptions {
        host_cpus: Some(8),
        host_memory_mb: Some(16384),
        ..KataOptions::new("t")
    }
}

/// The keys every test file has unless it sets them itself.
const BASE: &[(&str, &str)] = &[
    ("kernel", "\"/k\""),
    ("initrd", "\"/i\""),
    ("machine_type", "\"virt\""),
    ("shared_fs", "\"virtio-9p\""),
];

/// `[hypervisor.qemu]` on line 1, then the base keys `extra` does not replace, then `extra`,
/// one per line. `None` as a value drops a base key.
fn file(extra: &[(&str, Option<&str>)]) -> String {
    let mut text = String::from("[hypervisor.qemu]\n");
    for (key, value) in BASE {
        if !extra.iter().any(|(k, _)| k == key) {
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    for (key, value) in extra {
        if let Some(value) = value {
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    text
}

fn read_with(extra: &[(&str, Option<&str>)], options: &KataOptions) -> Result<KataSpec, KataError> {
    from_str(&file(extra), options)
}

fn read(extra: &[(&str, &str)]) -> Result<KataSpec, KataError> {
    let extra: Vec<(&str, Option<&str>)> = extra.iter().map(|(k, v)| (*k, Some(*v))).collect();
    read_with(&extra, &opts())
}

fn ok(extra: &[(&str, &str)]) -> KataSpec {
    read(extra).unwrap_or_else(|e| panic!("{extra:?}: {e}"))
}

fn err(extra: &[(&str, &str)]) -> KataError {
    match read(extra) {
        Ok(kata) => panic!("{extra:?} was accepted: {:?}", kata.spec.hypervisor),
        Err(e) => e,
    }
}

/// The line `key = …` is on in `text`.
fn line_in(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(&format!("{key} =")))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{key} not in {text}"))
}

/// A value of `ty` that is not Go's zero value.
fn non_zero(ty: Type) -> &'static str {
    match ty {
        Type::Str => "\"x\"",
        Type::Bool => "true",
        Type::U32 | Type::U64 | Type::I64 | Type::Number => "7",
        Type::StrList => "[\"x\"]",
    }
}

/// A value that is not of type `ty`.
fn wrong(ty: Type) -> &'static str {
    match ty {
        Type::Str => "1",
        Type::Bool => "\"yes\"",
        Type::U32 | Type::U64 => "-1",
        Type::I64 | Type::Number => "\"1\"",
        Type::StrList => "\"a\"",
    }
}

#[test]
fn every_key_is_type_checked_with_its_line() {
    for key in QEMU_KEYS {
        let extra = [(key.name, Some(wrong(key.ty)))];
        let text = file(&extra);
        let line = line_in(&text, key.name);
        let e = from_str(&text, &opts()).expect_err(key.name);
        let full = format!("hypervisor.qemu.{}", key.name);
        match &e {
            KataError::Type {
                key: k,
                line: l,
                expected,
                ..
            } => {
                assert_eq!((k, *l, *expected), (&full, line, key.ty.expected()), "{e}");
            }
            other => panic!("{}: {other}", key.name),
        }
        let message = e.to_string();
        assert!(
            message.starts_with(&format!(
                "line {line}: `{full}` must be {}",
                key.ty.expected()
            )),
            "{message}"
        );
    }
}

#[test]
fn out_of_range_integers_are_type_errors() {
    let e = err(&[("default_memory", "4294967296")]);
    assert!(
        e.to_string()
            .contains("must be an integer from 0 to 4294967295, not the integer 4294967296"),
        "{e}"
    );
    let e = err(&[("default_bridges", "-1")]);
    assert!(matches!(e, KataError::Type { .. }), "{e}");
    let e = err(&[("pflashes", "[\"/a\", 2]")]);
    assert!(
        e.to_string().contains("not an array holding the integer 2"),
        "{e}"
    );
}

#[test]
fn ignored_keys_warn_when_set_and_only_then() {
    let baseline = ok(&[]);
    assert!(baseline.warnings.is_empty(), "{:?}", baseline.warnings);
    for key in QEMU_KEYS {
        let Role::Ignored(reason) = key.role else {
            continue;
        };
        let set = ok(&[(key.name, non_zero(key.ty))]);
        let text = file(&[(key.name, Some(non_zero(key.ty)))]);
        assert_eq!(
            set.warnings,
            [KataWarning {
                key: format!("hypervisor.qemu.{}", key.name),
                line: Some(line_in(&text, key.name)),
                kind: WarningKind::NotHonoured { reason },
            }],
            "{}",
            key.name
        );
        assert_eq!(set.spec, baseline.spec, "{} changed the VM", key.name);
        let zero = match key.ty {
            Type::Str => "\"\"",
            Type::Bool => "false",
            Type::StrList => "[]",
            _ => "0",
        };
        assert!(ok(&[(key.name, zero)]).warnings.is_empty(), "{}", key.name);
    }
}

#[test]
fn inert_keys_change_nothing() {
    let baseline = ok(&[]);
    for key in QEMU_KEYS.iter().filter(|k| k.role == Role::Inert) {
        let set = ok(&[(key.name, non_zero(key.ty))]);
        assert!(set.warnings.is_empty(), "{}: {:?}", key.name, set.warnings);
        assert_eq!(set.spec, baseline.spec, "{}", key.name);
    }
}

/// One mapped key set in a file, and what it must do to the spec.
struct Case {
    key: &'static str,
    extra: &'static [(&'static str, &'static str)],
    check: fn(&KataSpec),
}

const MAPPED: &[Case] = &[
    Case {
        key: "path",
        extra: &[("path", "\"/opt/kata/bin/qemu-system-aarch64\"")],
        check: |k| {
            assert_eq!(
                k.spec.hypervisor.hypervisor_path.as_deref(),
                Some(Path::new("/opt/kata/bin/qemu-system-aarch64"))
            )
        },
    },
    Case {
        key: "valid_hypervisor_paths",
        extra: &[
            ("path", "\"/opt/kata/bin/qemu-system-aarch64\""),
            (
                "valid_hypervisor_paths",
                "[\"/usr/bin/*\", \"/opt/kata/bin/qemu-*\"]",
            ),
        ],
        check: |k| assert!(k.spec.hypervisor.hypervisor_path.is_some()),
    },
    Case {
        key: "kernel",
        extra: &[("kernel", "\"/boot/vmlinux\"")],
        check: |k| {
            assert_eq!(
                k.spec.hypervisor.kernel_path.as_deref(),
                Some(Path::new("/boot/vmlinux"))
            )
        },
    },
    Case {
        key: "initrd",
        extra: &[("initrd", "\"/boot/initrd.img\"")],
        check: |k| {
            assert_eq!(
                k.spec.hypervisor.initrd_path.as_deref(),
                Some(Path::new("/boot/initrd.img"))
            );
            assert_eq!(k.spec.hypervisor.image_path, None);
        },
    },
    Case {
        key: "image",
        extra: &[
            ("initrd", "\"\""),
            ("image", "\"/img\""),
            ("firmware", "\"/fw\""),
        ],
        check: |k| {
            let h = &k.spec.hypervisor;
            assert_eq!(h.image_path.as_deref(), Some(Path::new("/img")));
            assert_eq!(h.initrd_path, None);
            assert!(!h.disable_nvdimm);
        },
    },
    Case {
        key: "rootfs_type",
        extra: &[("rootfs_type", "\"ext4\"")],
        check: |k| assert!(k.warnings.is_empty()),
    },
    Case {
        key: "firmware",
        extra: &[("firmware", "\"/usr/share/AAVMF/AAVMF_CODE.fd\"")],
        check: |k| {
            assert_eq!(
                k.spec.hypervisor.firmware_path.as_deref(),
                Some(Path::new("/usr/share/AAVMF/AAVMF_CODE.fd"))
            )
        },
    },
    Case {
        key: "pflashes",
        extra: &[("pflashes", "[\"/fw/CODE.fd\", \"/fw/VARS.fd\"]")],
        check: |k| {
            assert_eq!(
                k.spec.hypervisor.pflashes,
                [Path::new("/fw/CODE.fd"), Path::new("/fw/VARS.fd")]
            )
        },
    },
    Case {
        key: "kernel_params",
        extra: &[("kernel_params", "\"foo=1 bar dyndbg=\\\"file a.c +p\\\"\"")],
        check: |k| {
            assert_eq!(
                k.spec.hypervisor.kernel_params.to_string(),
                "scsi_mod.scan=none foo=1 bar dyndbg=\"file a.c +p\""
            )
        },
    },
    Case {
        key: "machine_type",
        extra: &[("machine_type", "\"q35\"")],
        check: |k| {
            assert_eq!(k.spec.hypervisor.machine_type.as_deref(), Some("q35"));
            assert_eq!(k.spec.arch, Some(GuestArch::X86_64));
        },
    },
    Case {
        key: "machine_accelerators",
        extra: &[("machine_accelerators", "\" gic-version=3 ,, its=off,\"")],
        check: |k| {
            assert_eq!(
                k.spec.hypervisor.machine_accelerators,
                "gic-version=3,its=off"
            )
        },
    },
    Case {
        key: "cpu_features",
        extra: &[("cpu_features", "\"pmu=off, sve=off,\"")],
        check: |k| assert_eq!(k.spec.hypervisor.cpu_features, ["pmu=off", "sve=off"]),
    },
    Case {
        key: "default_vcpus",
        extra: &[("default_vcpus", "3")],
        check: |k| assert_eq!(k.spec.hypervisor.num_vcpus, 3),
    },
    Case {
        key: "default_maxvcpus",
        extra: &[("default_maxvcpus", "4")],
        check: |k| assert_eq!(k.spec.hypervisor.default_max_vcpus, 4),
    },
    Case {
        key: "seccompsandbox",
        extra: &[(
            "seccompsandbox",
            "\"on,obsolete=deny,spawn=deny,resourcecontrol=deny\"",
        )],
        check: |k| {
            assert_eq!(
                k.spec.hypervisor.seccomp_sandbox,
                Some(Sandbox {
                    deny_obsolete: true,
                    deny_elevate_privileges: false,
                    deny_spawn: true,
                    deny_resource_control: true,
                })
            )
        },
    },
    Case {
        key: "enable_debug",
        extra: &[("enable_debug", "true")],
        check: |k| assert!(k.spec.hypervisor.debug),
    },
    Case {
        key: "disable_nesting_checks",
        extra: &[("disable_nesting_checks", "true")],
        check: |k| assert!(k.spec.hypervisor.disable_nesting_checks),
    },
    Case {
        key: "default_memory",
        extra: &[("default_memory", "4096")],
        check: |k| assert_eq!(k.spec.hypervisor.memory_mb, 4096),
    },
    Case {
        key: "default_maxmemory",
        extra: &[("default_maxmemory", "8192")],
        check: |k| assert_eq!(k.spec.host_memory_mb, Some(8192)),
    },
    Case {
        key: "memory_slots",
        extra: &[("memory_slots", "4")],
        check: |k| assert_eq!(k.spec.hypervisor.memory_slots, 4),
    },
    Case {
        key: "memory_offset",
        extra: &[("memory_offset", "1024")],
        check: |k| assert_eq!(k.spec.hypervisor.memory_offset_mb, 1024),
    },
    Case {
        key: "enable_mem_prealloc",
        extra: &[("enable_mem_prealloc", "true")],
        check: |k| assert!(k.spec.hypervisor.mem_prealloc),
    },
    Case {
        key: "enable_hugepages",
        extra: &[("enable_hugepages", "true")],
        check: |k| assert!(k.spec.hypervisor.hugepages),
    },
    Case {
        key: "file_mem_backend",
        extra: &[("file_mem_backend", "\"/dev/shm\"")],
        check: |k| {
            assert_eq!(
                k.spec.hypervisor.file_backed_mem_root.as_deref(),
                Some(Path::new("/dev/shm"))
            )
        },
    },
    Case {
        key: "enable_swap",
        extra: &[("enable_swap", "true")],
        check: |k| assert!(k.spec.hypervisor.enable_swap),
    },
    Case {
        key: "default_bridges",
        extra: &[("default_bridges", "3")],
        check: |k| assert_eq!(k.spec.hypervisor.default_bridges, 3),
    },
    Case {
        key: "pcie_root_port",
        extra: &[("pcie_root_port", "2")],
        check: |k| assert_eq!(k.spec.hypervisor.pcie_root_ports, 2),
    },
    Case {
        key: "hot_plug_vfio",
        extra: &[("hot_plug_vfio", "\"no-port\"")],
        check: |k| assert!(k.warnings.is_empty()),
    },
    Case {
        key: "cold_plug_vfio",
        extra: &[("cold_plug_vfio", "\"root-port\"")],
        check: |k| assert_eq!(k.warnings[0].key, "hypervisor.qemu.cold_plug_vfio"),
    },
    Case {
        key: "enable_iommu",
        extra: &[("enable_iommu", "true")],
        check: |k| assert!(k.spec.hypervisor.iommu),
    },
    Case {
        key: "entropy_source",
        extra: &[("entropy_source", "\"/dev/random\"")],
        check: |k| assert_eq!(k.spec.hypervisor.entropy_source, Path::new("/dev/random")),
    },
    Case {
        key: "disable_vhost_net",
        extra: &[("disable_vhost_net", "true")],
        check: |k| assert!(k.spec.hypervisor.disable_vhost_net),
    },
    Case {
        key: "use_vsock",
        extra: &[("use_vsock", "false")],
        check: |k| assert!(!k.spec.use_vsock),
    },
    Case {
        key: "block_device_driver",
        extra: &[("block_device_driver", "\"virtio-blk\"")],
        check: |k| {
            assert_eq!(
                k.spec.hypervisor.block_device_driver,
                BlockDriver::VirtioBlk
            );
            assert!(!k
                .spec
                .hypervisor
                .kernel_params
                .to_string()
                .contains("scsi_mod"));
        },
    },
    Case {
        key: "block_device_aio",
        extra: &[("block_device_aio", "\"threads\"")],
        check: |k| assert!(k.warnings.is_empty()),
    },
    Case {
        key: "enable_iothreads",
        extra: &[("enable_iothreads", "true")],
        check: |k| assert!(k.spec.hypervisor.enable_iothreads),
    },
    Case {
        key: "disable_image_nvdimm",
        extra: &[
            ("initrd", "\"\""),
            ("image", "\"/img\""),
            ("firmware", "\"/fw\""),
            ("disable_image_nvdimm", "true"),
        ],
        check: |k| {
            assert!(k.spec.hypervisor.disable_nvdimm);
            assert!(k.warnings.is_empty());
        },
    },
    Case {
        key: "enable_vhost_user_store",
        extra: &[("enable_vhost_user_store", "true")],
        check: |k| assert!(k.spec.hypervisor.enable_vhost_user_store),
    },
    Case {
        key: "shared_fs",
        extra: &[("shared_fs", "\"none\"")],
        check: |k| assert_eq!(k.spec.hypervisor.shared_fs, SharedFs::None),
    },
    Case {
        key: "virtio_fs_daemon",
        extra: &[
            ("shared_fs", "\"virtio-fs\""),
            ("virtio_fs_daemon", "\"/usr/libexec/virtiofsd\""),
        ],
        check: |k| {
            let h = &k.spec.hypervisor;
            assert_eq!(h.shared_fs, SharedFs::VirtioFs);
            assert_eq!(
                h.virtio_fs_daemon.as_deref(),
                Some(Path::new("/usr/libexec/virtiofsd"))
            );
        },
    },
    Case {
        key: "valid_virtio_fs_daemon_paths",
        extra: &[
            ("shared_fs", "\"virtio-fs\""),
            ("virtio_fs_daemon", "\"/usr/libexec/kata-qemu/virtiofsd\""),
            (
                "valid_virtio_fs_daemon_paths",
                "[\"/usr/libexec/*/virtiofsd\"]",
            ),
        ],
        check: |k| assert!(k.spec.hypervisor.virtio_fs_daemon.is_some()),
    },
    Case {
        key: "virtio_fs_cache",
        extra: &[("virtio_fs_cache", "\"metadata\"")],
        check: |k| assert_eq!(k.spec.hypervisor.virtio_fs_cache, VirtioFsCache::Metadata),
    },
    Case {
        key: "virtio_fs_cache_size",
        extra: &[("virtio_fs_cache_size", "1024")],
        check: |k| assert_eq!(k.warnings[0].key, "hypervisor.qemu.virtio_fs_cache_size"),
    },
    Case {
        key: "virtio_fs_queue_size",
        extra: &[("virtio_fs_queue_size", "1024")],
        check: |k| assert_eq!(k.spec.hypervisor.virtio_fs_queue_size, Some(1024)),
    },
    Case {
        key: "virtio_fs_extra_args",
        extra: &[(
            "virtio_fs_extra_args",
            "[\"--thread-pool-size=1\", \"-o\", \"x\"]",
        )],
        check: |k| {
            assert_eq!(
                k.spec.hypervisor.virtio_fs_extra_args,
                ["--thread-pool-size=1", "-o", "x"]
            )
        },
    },
    Case {
        key: "virtio_fs_inode_file_handles",
        extra: &[("virtio_fs_inode_file_handles", "\"mandatory\"")],
        check: |k| {
            assert_eq!(
                k.spec.hypervisor.virtio_fs_inode_file_handles,
                Some(InodeFileHandles::Mandatory)
            )
        },
    },
    Case {
        key: "extra_monitor_socket",
        extra: &[
            ("extra_monitor_socket", "\"hmp\""),
            ("enable_debug", "true"),
        ],
        check: |k| {
            assert_eq!(k.extra_monitor, Some(MonitorMode::Readline));
            assert_eq!(
                k.extra_monitors(Path::new("/run/hvarch/t")),
                [Monitor {
                    id: "extra-monitor".into(),
                    endpoint: MonitorEndpoint::Path("/run/hvarch/t/extra-monitor.sock".into()),
                    mode: MonitorMode::Readline,
                }]
            );
        },
    },
    Case {
        key: "confidential_guest",
        extra: &[("confidential_guest", "false")],
        check: |k| assert!(k.warnings.is_empty()),
    },
    Case {
        key: "sev_snp_guest",
        extra: &[("sev_snp_guest", "false")],
        check: |k| assert!(k.warnings.is_empty()),
    },
];

#[test]
fn every_mapped_key_maps() {
    for case in MAPPED {
        let kata = ok(case.extra);
        (case.check)(&kata);
    }
    let tested: Vec<&str> = MAPPED.iter().map(|c| c.key).collect();
    for key in QEMU_KEYS.iter().filter(|k| k.role == Role::Mapped) {
        assert!(
            tested.contains(&key.name),
            "no mapping test for `{}`",
            key.name
        );
    }
}

#[test]
fn kata_defaults_for_an_almost_empty_file() {
    let h = ok(&[]).spec.hypervisor;
    assert_eq!(h.num_vcpus, 1);
    assert_eq!(h.default_max_vcpus, 8);
    assert_eq!(h.memory_mb, 2048);
    assert_eq!(h.memory_slots, 10);
    assert_eq!(h.memory_offset_mb, 0);
    assert_eq!(h.default_bridges, 1);
    assert_eq!(h.pcie_root_ports, 0);
    assert_eq!(h.entropy_source, Path::new("/dev/urandom"));
    assert_eq!(h.block_device_driver, BlockDriver::VirtioScsi);
    assert_eq!(h.virtio_fs_cache, VirtioFsCache::Auto);
    assert!(!h.enable_swap, "Kata locks guest memory unless enable_swap");
    assert_eq!(h.hypervisor_path, None, "the backend's binary");
    assert_eq!(h.kernel_params.to_string(), "scsi_mod.scan=none");
    // No kernel: Kata's packaged one.
    let kata = read_with(&[("kernel", None)], &opts()).unwrap();
    assert_eq!(
        kata.spec.hypervisor.kernel_path.as_deref(),
        Some(Path::new(crate::spec::DEFAULT_KERNEL))
    );
    // No shared_fs: virtio-fs, which needs a daemon.
    let e = read_with(&[("shared_fs", None)], &opts()).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot enable virtio-fs without a daemon"),
        "{e}"
    );
}

#[test]
fn vcpu_clamping_through_the_file() {
    let vcpus = |v: &str| ok(&[("default_vcpus", v)]).spec.hypervisor.num_vcpus;
    assert_eq!(vcpus("0"), 1);
    assert_eq!(vcpus("-1"), 8, "negative: the host's CPUs");
    assert_eq!(vcpus("9"), 8, "above the host's CPUs: the host's CPUs");
    assert_eq!(vcpus("8"), 8);
    assert_eq!(vcpus("2.5"), 3, "fractions round up");
    assert_eq!(vcpus("0.1"), 1);
    assert_eq!(vcpus("inf"), 8);
    assert_eq!(vcpus("-inf"), 8);
    assert!(matches!(
        err(&[("default_vcpus", "nan")]),
        KataError::Invalid { .. }
    ));
    let max = |v: &str| {
        ok(&[("default_maxvcpus", v)])
            .spec
            .hypervisor
            .default_max_vcpus
    };
    assert_eq!(max("0"), 8);
    assert_eq!(max("8"), 8);
    assert_eq!(max("100"), 8);
    assert_eq!(max("2"), 2);
    // default_vcpus never above the ceiling.
    let h = ok(&[("default_vcpus", "6"), ("default_maxvcpus", "2")])
        .spec
        .hypervisor;
    assert_eq!((h.num_vcpus, h.default_max_vcpus), (2, 2));
    // The backend's limit: 123 on arm64 (GICv3), 240 on x86_64.
    let big = KataOptions {
        host_cpus: Some(512),
        ..opts()
    };
    let h = read_with(&[("default_vcpus", Some("-1"))], &big)
        .unwrap()
        .spec
        .hypervisor;
    assert_eq!((h.num_vcpus, h.default_max_vcpus), (123, 123));
    let h = read_with(
        &[
            ("machine_type", Some("\"q35\"")),
            ("default_vcpus", Some("-1")),
        ],
        &big,
    )
    .unwrap()
    .spec
    .hypervisor;
    assert_eq!((h.num_vcpus, h.default_max_vcpus), (240, 240));
}

#[test]
fn memory_bridges_and_ports_clamping() {
    let spec = |extra: &[(&str, &str)]| ok(extra).spec;
    assert_eq!(spec(&[("default_memory", "0")]).hypervisor.memory_mb, 2048);
    let small = ok(&[("default_memory", "128")]);
    assert_eq!(small.spec.hypervisor.memory_mb, 2048);
    assert!(
        matches!(
            &small.warnings[..],
            [KataWarning {
                kind: WarningKind::Adjusted { .. },
                line: Some(6),
                ..
            }]
        ),
        "{:?}",
        small.warnings
    );
    assert_eq!(spec(&[("default_memory", "256")]).hypervisor.memory_mb, 256);
    assert_eq!(
        spec(&[("default_maxmemory", "0")]).host_memory_mb,
        Some(16384)
    );
    assert_eq!(
        spec(&[("default_maxmemory", "99999")]).host_memory_mb,
        Some(16384)
    );
    assert_eq!(spec(&[("memory_slots", "0")]).hypervisor.memory_slots, 10);
    assert_eq!(
        spec(&[("default_bridges", "0")]).hypervisor.default_bridges,
        1
    );
    assert_eq!(
        spec(&[("default_bridges", "5")]).hypervisor.default_bridges,
        5
    );
    assert_eq!(
        spec(&[("default_bridges", "7")]).hypervisor.default_bridges,
        5
    );
    assert_eq!(
        spec(&[("pcie_root_port", "20")]).hypervisor.pcie_root_ports,
        16
    );
    assert_eq!(
        spec(&[("entropy_source", "\"\"")])
            .hypervisor
            .entropy_source,
        Path::new("/dev/urandom")
    );
}

#[test]
fn nvdimm_is_forced_off_where_kata_forces_it() {
    let image = [("initrd", "\"\""), ("image", "\"/img\"")];
    // arm64 without firmware or pflash: no ACPI, so no NVDIMM.
    let kata = ok(&image);
    assert!(kata.spec.hypervisor.disable_nvdimm);
    assert_eq!(kata.warnings.len(), 1);
    assert_eq!(kata.warnings[0].key, "hypervisor.qemu.disable_image_nvdimm");
    assert_eq!(kata.warnings[0].line, None);
    // With pflash it stays.
    let kata = ok(&[image[0], image[1], ("pflashes", "[\"/c\", \"/v\"]")]);
    assert!(!kata.spec.hypervisor.disable_nvdimm);
    // microvm never has one; q35 does.
    let kata = ok(&[image[0], image[1], ("machine_type", "\"microvm\"")]);
    assert!(kata.spec.hypervisor.disable_nvdimm);
    let kata = ok(&[image[0], image[1], ("machine_type", "\"q35\"")]);
    assert!(!kata.spec.hypervisor.disable_nvdimm);
    assert!(kata.warnings.is_empty());
}

#[test]
fn kernel_parameters_in_katas_order() {
    let text = "[hypervisor.qemu]\nkernel = \"/k\"\nimage = \"/img\"\nfirmware = \"/fw\"\n\
                shared_fs = \"virtio-9p\"\nkernel_params = \"agent.log=info quiet=0\"\n\
                [agent.kata]\nenable_debug = true\nenable_tracing = true\n\
                debug_console_enabled = true\ncdh_api_timeout = 50\n\
                kernel_modules = [\"e1000e InterruptThrottleRate=3000\"]\ndial_timeout = 45\n\
                something_new = \"ignored\"\n";
    let kata = from_str(text, &opts()).unwrap();
    assert_eq!(
        kata.spec.hypervisor.kernel_params.to_string(),
        "systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service \
         systemd.mask=systemd-networkd.socket scsi_mod.scan=none agent.log=debug \
         agent.trace=true agent.debug_console agent.debug_console_vport=1026 \
         agent.cdh_api_timeout=50 agent.log=info quiet=0"
    );
    assert_eq!(kata.kernel_modules, ["e1000e InterruptThrottleRate=3000"]);
    assert_eq!(
        kata.warnings,
        [KataWarning {
            key: "agent.kata.kernel_modules".into(),
            line: Some(12),
            kind: WarningKind::NotHonoured {
                reason: "Kata sends them to its agent when it creates the sandbox; they are \
                         not part of the VM (see KataSpec::kernel_modules)",
            },
        }]
    );
    // The agent's keys are type-checked too.
    let e = from_str(
        "[hypervisor.qemu]\ninitrd=\"/i\"\nshared_fs=\"none\"\n[agent.kata]\nenable_debug = 1\n",
        &opts(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 5: `agent.kata.enable_debug` must be a boolean, not the integer 1"
    );
}

#[test]
fn unknown_keys_are_errors_with_suggestions_unless_lenient() {
    let text = file(&[("default_vcpu", Some("2")), ("brand_new_key", Some("1"))]);
    let e = from_str(&text, &opts()).unwrap_err();
    // BTreeMap order: the first unknown key alphabetically is reported.
    assert_eq!(
        e.to_string(),
        format!(
            "line {}: unknown key `hypervisor.qemu.brand_new_key`",
            line_in(&text, "brand_new_key")
        )
    );
    let text = file(&[("default_vcpu", Some("2"))]);
    let e = from_str(&text, &opts()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "line {}: unknown key `hypervisor.qemu.default_vcpu` (did you mean `default_vcpus`?)",
            line_in(&text, "default_vcpu")
        )
    );
    let lenient = KataOptions {
        lenient: true,
        ..opts()
    };
    let kata = from_str(&text, &lenient).unwrap();
    assert_eq!(
        kata.warnings,
        [KataWarning {
            key: "hypervisor.qemu.default_vcpu".into(),
            line: Some(line_in(&text, "default_vcpu")),
            kind: WarningKind::UnknownKey {
                suggestion: Some("default_vcpus")
            },
        }]
    );
    assert_eq!(kata.spec.hypervisor.num_vcpus, 1);
    assert_eq!(
        kata.warnings[0].to_string(),
        "line 6: unknown key `hypervisor.qemu.default_vcpu` ignored (did you mean `default_vcpus`?)"
    );
    // Type errors stay errors when lenient.
    assert!(read_with(&[("kernel", Some("1"))], &lenient).is_err());
}

#[test]
fn other_tables_are_accepted_and_ignored() {
    let text = format!(
        "{}[runtime]\nenable_debug = true\nnot_a_kata_key = 1\n[factory]\nenable_template = \
         true\n[image]\nprovision = \"x\"\n[hypervisor.clh]\npath = 7\n",
        file(&[])
    );
    assert_eq!(from_str(&text, &opts()).unwrap().spec, ok(&[]).spec);
}

#[test]
fn refusals_name_the_key_and_line() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("image", "\"/img\"")],
            "line 6: `hypervisor.qemu.image` = \"/img\": Kata does not support both",
        ),
        (&[("initrd", "\"\"")], "`hypervisor.qemu.initrd` = \"\": set `initrd` or `image`"),
        (
            &[("path", "\"/tmp/qemu\""), ("valid_hypervisor_paths", "[\"/usr/bin/*\"]")],
            "line 6: `hypervisor.qemu.path` = \"/tmp/qemu\": not in `valid_hypervisor_paths` \
             (/usr/bin/*)",
        ),
        (
            &[
                ("shared_fs", "\"virtio-fs\""),
                ("virtio_fs_daemon", "\"/tmp/virtiofsd\""),
                ("valid_virtio_fs_daemon_paths", "[\"/usr/libexec/virtiofsd\"]"),
            ],
            "`hypervisor.qemu.virtio_fs_daemon` = \"/tmp/virtiofsd\": not in",
        ),
        (&[("shared_fs", "\"virtio-fs\"")], "cannot enable virtio-fs without a daemon"),
        (&[("shared_fs", "\"nfs\"")], "Kata knows virtio-fs, virtio-9p"),
        (&[("confidential_guest", "true")], "line 6: `hypervisor.qemu.confidential_guest`: hvarch cannot build a confidential guest"),
        (&[("sev_snp_guest", "true")], "`hypervisor.qemu.sev_snp_guest`: hvarch cannot"),
        (&[("rootfs_type", "\"btrfs\"")], "Kata knows ext4, xfs and erofs"),
        (&[("block_device_driver", "\"virtio-mmio\"")], "no virtio-blk-mmio"),
        (&[("block_device_driver", "\"ide\"")], "Kata knows virtio-scsi"),
        (&[("block_device_aio", "\"posix\"")], "Kata knows threads, native and io_uring"),
        (&[("virtio_fs_cache", "\"sometimes\"")], "Kata knows auto, always"),
        (&[("virtio_fs_inode_file_handles", "\"maybe\"")], "never, prefer and mandatory"),
        (&[("virtio_fs_queue_size", "1000")], "a power of two up to 1024"),
        (&[("virtio_fs_queue_size", "2048")], "a power of two up to 1024"),
        (&[("kernel_params", "\"a=\\\"b\"")], "unterminated quote"),
        (&[("seccompsandbox", "\"deny\"")], "must start with `on`"),
        (&[("seccompsandbox", "\"on,spawn=maybe\"")], "deny and allow only"),
        (&[("seccompsandbox", "\"on,network=deny\"")], "unknown filter `network`"),
        (&[("machine_type", "\"pc-i440fx\"")], "`hypervisor.qemu.machine_type`"),
        (&[("use_vsock", "true")], "set KataOptions::vsock_cid"),
        (&[("hot_plug_vfio", "\"any-port\"")], "no-port, bridge-port"),
        (&[("extra_monitor_socket", "\"telnet\"")], "Kata knows hmp, qmp and qmp-pretty"),
        (
            &[("hot_plug_vfio", "\"root-port\""), ("cold_plug_vfio", "\"root-port\"")],
            "only one of `hot_plug_vfio` and `cold_plug_vfio`",
        ),
    ];
    for (extra, expected) in cases {
        let e = err(extra).to_string();
        assert!(e.contains(expected), "{extra:?}: {e:?} lacks {expected:?}");
    }
    let e = from_str("[hypervisor.clh]\npath = \"/x\"\n", &opts()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no [hypervisor.qemu] table (the file configures: clh): hvarch builds QEMU VMs"
    );
    let e = from_str("[hypervisor.qemu\n", &opts()).unwrap_err();
    assert!(matches!(e, KataError::Syntax { .. }), "{e}");
    assert!(e.to_string().contains("line 1"), "{e}");
    let e = from_str("hypervisor = 1\n", &opts()).unwrap_err();
    assert!(matches!(e, KataError::Syntax { .. }), "{e}");
    let e = from_file(Path::new("/nonexistent/configuration.toml"), &opts()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot read /nonexistent/configuration.toml"),
        "{e}"
    );
}

#[test]
fn warnings_for_what_is_not_honoured_as_written() {
    let warned = |extra: &[(&str, &str)]| -> Vec<String> {
        ok(extra).warnings.iter().map(|w| w.key.clone()).collect()
    };
    assert_eq!(
        warned(&[("block_device_aio", "\"io_uring\"")]),
        ["hypervisor.qemu.block_device_aio"]
    );
    assert_eq!(
        warned(&[("virtio_fs_cache", "\"none\"")]),
        ["hypervisor.qemu.virtio_fs_cache"]
    );
    assert_eq!(
        ok(&[("virtio_fs_cache", "\"none\"")])
            .spec
            .hypervisor
            .virtio_fs_cache,
        VirtioFsCache::Never
    );
    assert_eq!(
        warned(&[
            ("initrd", "\"\""),
            ("image", "\"/i\""),
            ("firmware", "\"/f\""),
            ("rootfs_type", "\"xfs\"")
        ]),
        ["hypervisor.qemu.rootfs_type"]
    );
    assert!(
        warned(&[("rootfs_type", "\"xfs\"")]).is_empty(),
        "initrd: no root parameters"
    );
    let nydus = ok(&[
        ("shared_fs", "\"virtio-fs-nydus\""),
        ("virtio_fs_daemon", "\"/usr/bin/nydusd\""),
    ]);
    assert_eq!(nydus.spec.hypervisor.shared_fs, SharedFs::VirtioFs);
    assert_eq!(nydus.warnings[0].key, "hypervisor.qemu.shared_fs");
    // The extra monitor: only with enable_debug; qmp-pretty is plain QMP.
    let no_debug = ok(&[("extra_monitor_socket", "\"qmp\"")]);
    assert_eq!(no_debug.extra_monitor, None);
    assert_eq!(
        no_debug.warnings[0].key,
        "hypervisor.qemu.extra_monitor_socket"
    );
    assert!(no_debug.extra_monitors(Path::new("/run")).is_empty());
    let pretty = ok(&[
        ("extra_monitor_socket", "\"qmp-pretty\""),
        ("enable_debug", "true"),
    ]);
    assert_eq!(pretty.extra_monitor, Some(MonitorMode::Control));
    assert_eq!(pretty.warnings.len(), 1);
    let w = &ok(&[("enable_virtio_mem", "true")]).warnings[0];
    assert_eq!(
        w.to_string(),
        "line 6: `hypervisor.qemu.enable_virtio_mem` is not honoured: hvarch plugs no virtio-mem \
         device at boot"
    );
}

#[test]
fn options_the_file_cannot_give() {
    // The shared directory, under Kata's tag, shared the file's way.
    let options = KataOptions {
        shared_dir: Some("/run/kata-containers/shared/sandboxes/t/shared".into()),
        vsock_cid: Some(3),
        ..opts()
    };
    let kata = read_with(&[], &options).unwrap();
    assert_eq!(
        kata.spec.volumes,
        [Volume {
            mount_tag: "kataShared".into(),
            host_path: "/run/kata-containers/shared/sandboxes/t/shared".into(),
        }]
    );
    assert!(kata.spec.use_vsock);
    assert_eq!(kata.spec.vsock_cid, Some(3));
    let none = read_with(&[("shared_fs", Some("\"none\""))], &options).unwrap();
    assert!(none.spec.volumes.is_empty());
    assert_eq!(none.warnings[0].key, "hypervisor.qemu.shared_fs");
    // Kata 1.x's use_vsock with a context id.
    let kata = read_with(&[("use_vsock", Some("true"))], &options).unwrap();
    assert!(kata.spec.use_vsock);
    // The arch: given, or inferred from the machine type.
    let x86 = KataOptions {
        arch: Some(GuestArch::X86_64),
        ..opts()
    };
    let kata = read_with(&[("machine_type", Some("\"q35\""))], &x86).unwrap();
    assert_eq!(kata.spec.arch, Some(GuestArch::X86_64));
    assert_eq!(kata.spec.id, "t");
    for (machine, arch) in [
        ("virt", GuestArch::Aarch64),
        ("q35", GuestArch::X86_64),
        ("pc", GuestArch::X86_64),
        ("microvm", GuestArch::X86_64),
    ] {
        let kata = ok(&[("machine_type", &format!("{machine:?}"))]);
        assert_eq!(kata.spec.arch, Some(arch), "{machine}");
    }
}

/// The examples in `examples/kata/`: read with the expected warnings, assembled into the
/// VM Kata would build.
#[test]
fn examples_read_as_kata_would() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kata");
    let arm = from_file(&dir.join("configuration-qemu-arm64.toml"), &opts()).unwrap();
    let keys: Vec<&str> = arm.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "hypervisor.qemu.block_device_aio",
            "hypervisor.qemu.disable_image_nvdimm"
        ]
    );
    let h = &arm.spec.hypervisor;
    assert_eq!(arm.spec.arch, Some(GuestArch::Aarch64));
    assert_eq!(h.shared_fs, SharedFs::VirtioFs);
    assert_eq!(h.virtio_fs_queue_size, Some(1024));
    assert_eq!(h.cpu_features, ["pmu=off"]);
    // The packaged image is not on this machine: a stand-in of the same name.
    let image = hvarch_arch::testing::TempImage::new("kata-containers.img", 4 << 20);
    let mut spec = arm.spec.clone();
    spec.hypervisor.image_path = Some(image.path().to_path_buf());
    let vm = crate::assemble(&spec).unwrap();
    let argv = vm.argv(crate::Syntax::Options).unwrap();
    assert_eq!(argv[0], "/usr/bin/qemu-system-aarch64");
    let after = |flag: &str| argv[argv.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert_eq!(after("-cpu"), "host,pmu=off");
    assert_eq!(after("-machine"), "virt,accel=kvm,usb=off,gic-version=host");
    assert!(after("-append")
        .contains("root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"));
    assert!(after("-append").ends_with(
        "systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service \
         systemd.mask=systemd-networkd.socket scsi_mod.scan=none"
    ));
    assert!(argv
        .iter()
        .any(|a| a.starts_with("memory-backend-file,id=dimm1,") && a.contains("share=on")));

    let x86 = from_file(&dir.join("configuration-qemu-x86_64.toml"), &opts()).unwrap();
    let keys: Vec<&str> = x86.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["hypervisor.qemu.block_device_aio"]);
    assert_eq!(x86.spec.arch, Some(GuestArch::X86_64));
    assert!(!x86.spec.hypervisor.disable_nvdimm);
}

proptest! {
    #[test]
    fn vcpu_clamps_stay_in_bounds(
        requested in prop_oneof![any::<f64>(), -4.0f64..300.0],
        requested_max in any::<u32>(),
        host in 1u32..1024,
        arch_max in 1u32..300,
    ) {
        prop_assume!(!requested.is_nan());
        let max = clamp_max_vcpus(requested_max, host, arch_max);
        prop_assert!(max >= 1 && max <= host.min(arch_max));
        if requested_max != 0 && requested_max < host.min(arch_max) {
            prop_assert_eq!(max, requested_max);
        }
        let vcpus = clamp_vcpus(requested, host.min(arch_max));
        prop_assert!(vcpus >= 1 && vcpus <= host.min(arch_max));
        if requested > 0.0 && requested <= f64::from(host.min(arch_max)) {
            prop_assert_eq!(vcpus, requested.ceil() as u32);
        }
    }

    #[test]
    fn arbitrary_numbers_in_a_file_never_panic(
        vcpus in any::<i64>(),
        maxvcpus in any::<u32>(),
        memory in any::<u32>(),
        maxmemory in 0u64..(1 << 40),
        bridges in any::<u32>(),
        ports in any::<u32>(),
        slots in any::<u32>(),
        host_cpus in 1u32..4096,
    ) {
        let options = KataOptions { host_cpus: Some(host_cpus), ..opts() };
        let text = file(&[
            ("default_vcpus", Some(&vcpus.to_string())),
            ("default_maxvcpus", Some(&maxvcpus.to_string())),
            ("default_memory", Some(&memory.to_string())),
            ("default_maxmemory", Some(&maxmemory.to_string())),
            ("default_bridges", Some(&bridges.to_string())),
            ("pcie_root_port", Some(&ports.to_string())),
            ("memory_slots", Some(&slots.to_string())),
        ]);
        let kata = from_str(&text, &options).unwrap();
        let h = &kata.spec.hypervisor;
        prop_assert!(h.num_vcpus >= 1 && h.num_vcpus <= h.default_max_vcpus);
        prop_assert!(h.default_max_vcpus <= host_cpus.min(123));
        prop_assert!(h.memory_mb >= MIN_MEMORY_MB);
        prop_assert!(h.default_bridges >= 1 && h.default_bridges <= 5);
        prop_assert!(h.pcie_root_ports <= 16);
        prop_assert!(h.memory_slots >= 1);
        prop_assert!(kata.spec.host_memory_mb.unwrap() <= 16384);
    }

    #[test]
    fn sandbox_values_round_trip(flags in proptest::collection::vec(any::<bool>(), 4)) {
        let names = ["obsolete", "elevateprivileges", "spawn", "resourcecontrol"];
        let mut value = String::from("on");
        for (name, deny) in names.iter().zip(&flags) {
            value.push_str(&format!(",{name}={}", if *deny { "deny" } else { "allow" }));
        }
        let sandbox = parse_sandbox(&value).unwrap().unwrap();
        prop_assert_eq!(
            [sandbox.deny_obsolete, sandbox.deny_elevate_privileges, sandbox.deny_spawn, sandbox.deny_resource_control],
            [flags[0], flags[1], flags[2], flags[3]]
        );
    }
}

#[test]
fn sandbox_off_is_none() {
    assert_eq!(parse_sandbox("off"), Ok(None));
    assert_eq!(parse_sandbox("on"), Ok(Some(Sandbox::default())));
    assert!(parse_sandbox("off,spawn=deny").is_err());
}
