//! Argv rendering of assembled VMs: the criterion bench `argv` of the facade crate `hvarch`
//! and allocations per render (`argv_allocs`, a counting global allocator).

use serde_json::Value;

use super::report::{fmt, Bar, Section, Target};
use crate::run::{cargo, workspace_root};

const TARGET_US: f64 = 50.0;

/// Criterion's median estimate of `bench`, in ns.
fn criterion_median(bench: &str) -> Result<f64, String> {
    let path = workspace_root()
        .join("target/criterion")
        .join(bench)
        .join("new/estimates.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    json["median"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| format!("{}: no median estimate", path.display()))
}

pub fn run() -> Result<Section, String> {
    eprintln!("==> criterion: argv rendering");
    cargo(&[
        "bench",
        "-p",
        "hvarch",
        "--bench",
        "argv",
        "--",
        "--output-format",
        "bencher",
        "--warm-up-time",
        "2",
        "--measurement-time",
        "5",
    ])
    .run()?;
    let default_ns = criterion_median("argv_default_vm")?;
    let big_ns = criterion_median("argv_64_devices")?;
    let allocs = cargo(&["bench", "-p", "hvarch", "--bench", "argv_allocs"])
        .output()
        .ok_or("the argv_allocs bench failed")?;
    // argv_allocs <vm> <allocations> <bytes> <args> <devices>
    let counts = |vm: &str| -> Vec<String> {
        allocs
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 6 && f[0] == "argv_allocs" && f[1] == vm)
                    .then(|| f[2..].iter().map(|s| (*s).to_owned()).collect())
            })
            .unwrap_or_else(|| vec!["n/a".into(); 4])
    };
    let (d, b) = (counts("default_vm"), counts("64_devices"));
    let big_us = big_ns / 1000.0;
    let per_alloc_ns = b[0]
        .parse::<f64>()
        .map_or(f64::NAN, |allocs| big_ns / allocs);
    let mut notes = Vec::new();
    if big_us >= TARGET_US {
        notes.push(format!(
            "The 64-device target is missed: rendering allocates {} times per render ({} per \
             device), {} ns of render time per allocation. Property names and literal values are \
             borrowed and each option is escaped straight into its argument, but each device's \
             parts still own copies of its ids and paths, and every argument is its own \
             `String` (the argv a launcher hands to exec); borrowing the device's values in its \
             parts is what is left to gain.",
            b[0],
            b[0].parse::<f64>().map_or("n/a".into(), |a| fmt(
                a / b[3].parse::<f64>().unwrap_or(f64::NAN),
                0
            )),
            fmt(per_alloc_ns, 0)
        ));
    }
    Ok(Section {
        title: "Argv rendering",
        method: "`VmConfig::to_args` in option syntax, criterion medians \
                 (`cargo bench -p hvarch --bench argv`): Kata's default arm64 VM as \
                 hvarch assembles it, and the same VM with 64 more devices (16 PCIe root \
                 ports, 48 virtio-blk disks each with its `-blockdev`). Allocations per render: \
                 `--bench argv_allocs`, a counting global allocator, mean of 100 renders."
            .into(),
        table: vec![
            vec![
                "VM".into(),
                "devices".into(),
                "args".into(),
                "median µs".into(),
                "allocations".into(),
                "bytes allocated".into(),
            ],
            vec![
                "Kata default".into(),
                d[3].clone(),
                d[2].clone(),
                fmt(default_ns / 1000.0, 1),
                d[0].clone(),
                d[1].clone(),
            ],
            vec![
                "+64 devices".into(),
                b[3].clone(),
                b[2].clone(),
                fmt(big_us, 1),
                b[0].clone(),
                b[1].clone(),
            ],
        ],
        targets: vec![Target {
            what: format!("a 64-device argv in under {TARGET_US} µs"),
            figure: format!("{} µs", fmt(big_us, 1)),
            met: big_us < TARGET_US,
        }],
        bars: vec![Bar {
            label: "argv: 50 µs target / 64-device render".into(),
            ratio: TARGET_US / big_us,
            target: Some(1.0),
        }],
        notes,
    })
}
