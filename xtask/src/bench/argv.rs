//! Argv rendering of assembled VMs: the criterion bench `argv` of the facade crate `hvarch`
//! and allocations per render (`argv_allocs`, a counting global allocator).

use serde_json::Value;

use super::report::{fmt, Bar, Section, Target};
use crate::run::{cargo, workspace_root};

/// The 64-device argv's targets (issue 14): time per render and allocations per render.
const TARGET_US: f64 = 40.0;
const TARGET_ALLOCS: f64 = 400.0;

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
        "hvarch-tests",
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
    let big_vec_ns = criterion_median("argv_64_devices_vec")?;
    let allocs = cargo(&["bench", "-p", "hvarch-tests", "--bench", "argv_allocs"])
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
    let (d, b, v) = (
        counts("default_vm"),
        counts("64_devices"),
        counts("64_devices_vec"),
    );
    let big_us = big_ns / 1000.0;
    let big_allocs = b[0].parse::<f64>().unwrap_or(f64::NAN);
    let mut notes = Vec::new();
    let allocs_met = big_allocs <= TARGET_ALLOCS;
    if big_us >= TARGET_US || !allocs_met {
        notes.push(format!(
            "A 64-device target is missed: {} µs and {} allocations per render. Where the \
             time goes (callgrind): writing and escaping the options, about half; building \
             each part's property list and moving it to the writer, nearly a third; checking \
             ids for duplicates and validating each device, a fifth. The machine's \
             speed swings too: the same build's 64-device render took 39–66 µs in runs of one \
             afternoon here, the ratio to the `Vec<String>` render in the same run stays put.",
            fmt(big_us, 1),
            b[0],
        ));
    }
    notes.push(format!(
        "One buffer against a `String` per argument (`to_args`, same run): {}× the time, \
         {} allocations instead of {}.",
        fmt(big_ns / big_vec_ns, 2),
        b[0],
        v[0],
    ));
    Ok(Section {
        title: "Argv rendering",
        method: "`VmConfig::to_argv` in option syntax (the launcher's render: every argument \
                 in one buffer), criterion medians (`cargo bench -p hvarch-tests --bench \
                 argv`): Kata's default arm64 VM as hvarch assembles it, and the same VM with \
                 64 more devices (16 PCIe root ports, 48 virtio-blk disks each with its \
                 `-blockdev`); and the 64-device VM by `VmConfig::to_args` (a `String` per \
                 argument). Allocations per render: `--bench argv_allocs`, a counting global \
                 allocator, mean of 100 renders."
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
            vec![
                "+64 devices, `to_args`".into(),
                v[3].clone(),
                v[2].clone(),
                fmt(big_vec_ns / 1000.0, 1),
                v[0].clone(),
                v[1].clone(),
            ],
        ],
        targets: vec![
            Target {
                what: format!("a 64-device argv in under {TARGET_US} µs"),
                figure: format!("{} µs", fmt(big_us, 1)),
                met: big_us < TARGET_US,
            },
            Target {
                what: format!("a 64-device argv in at most {TARGET_ALLOCS} allocations"),
                figure: b[0].clone(),
                met: allocs_met,
            },
        ],
        bars: vec![
            Bar {
                label: format!("argv: {TARGET_US} µs target / 64-device render"),
                ratio: TARGET_US / big_us,
                target: Some(1.0),
            },
            Bar {
                label: format!("argv: {TARGET_ALLOCS} allocations target / 64-device render"),
                ratio: TARGET_ALLOCS / big_allocs,
                target: Some(1.0),
            },
        ],
        notes,
    })
}
