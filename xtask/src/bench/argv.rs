//! Argv rendering of assembled VMs: renders timed in alternating rounds (`argv_alternating`),
//! the criterion bench `argv`, and allocations per render (`argv_allocs`, a counting global
//! allocator), all in `tests/benches`.

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

/// The `n` fields after `<tag> <vm>` on the line of a bench's `output` that has them (none if
/// no line has).
fn fields<'o>(output: &'o str, tag: &str, vm: &str, n: usize) -> Vec<&'o str> {
    output
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == n + 2 && f[0] == tag && f[1] == vm)
        .map(|f| f[2..].to_vec())
        .unwrap_or_default()
}

/// A table row: counts from `argv_allocs`, times (ns) from `argv_alternating` and criterion.
fn row(vm: &str, counts: &[String], times: [f64; 3], criterion_ns: f64) -> Vec<String> {
    let us = |ns: f64| fmt(ns / 1000.0, 1);
    vec![
        vm.into(),
        counts[3].clone(),
        counts[2].clone(),
        us(times[0]),
        format!("{}–{}", us(times[1]), us(times[2])),
        us(criterion_ns),
        counts[0].clone(),
        counts[1].clone(),
    ]
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
    let criterion = [
        criterion_median("argv_default_vm")?,
        criterion_median("argv_64_devices")?,
        criterion_median("argv_64_devices_vec")?,
    ];
    let timed = cargo(&["bench", "-p", "hvarch-tests", "--bench", "argv_alternating"])
        .output()
        .ok_or("the argv_alternating bench failed")?;
    // argv_time <vm> <median ns> <p10 ns> <p90 ns>
    let times = |vm: &str| -> [f64; 3] {
        let mut figures = [f64::NAN; 3];
        for (figure, text) in figures.iter_mut().zip(fields(&timed, "argv_time", vm, 3)) {
            *figure = text.parse().unwrap_or(f64::NAN);
        }
        figures
    };
    let (default_t, big_t, vec_t) = (
        times("default_vm"),
        times("64_devices"),
        times("64_devices_vec"),
    );
    let big_ns = big_t[0];
    let allocs = cargo(&["bench", "-p", "hvarch-tests", "--bench", "argv_allocs"])
        .output()
        .ok_or("the argv_allocs bench failed")?;
    // argv_allocs <vm> <allocations> <bytes> <args> <devices>
    let counts = |vm: &str| -> Vec<String> {
        let counts = fields(&allocs, "argv_allocs", vm, 4);
        if counts.is_empty() {
            return vec!["n/a".into(); 4];
        }
        counts.into_iter().map(str::to_owned).collect()
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
            "A 64-device target is missed: {} µs (median) and {} allocations per render. The \
             fastest tenth of the rounds took {} µs or less, the slowest tenth {} µs or \
             more{}. Where the time goes (callgrind): writing and escaping the options, about \
             half; building each part's property list and moving it to the writer, nearly a \
             third; checking ids for duplicates and validating each device, a fifth.",
            fmt(big_us, 1),
            b[0],
            fmt(big_t[1] / 1000.0, 1),
            fmt(big_t[2] / 1000.0, 1),
            if big_t[2] > 1.3 * big_t[1] {
                " (the machine's speed changed during the run)"
            } else {
                ""
            },
        ));
    }
    notes.push(format!(
        "One buffer against a `String` per argument (`to_args`, alternating rounds): {}× the \
         time, {} allocations instead of {}.",
        fmt(big_ns / vec_t[0], 2),
        b[0],
        v[0],
    ));
    Ok(Section {
        title: "Argv rendering",
        method: "`VmConfig::to_argv` in option syntax (the launcher's render: every argument \
                 in one buffer) for Kata's default arm64 VM as hvarch assembles it and for the \
                 same VM with 64 more devices (16 PCIe root ports, 48 virtio-blk disks each \
                 with its `-blockdev`); and the 64-device VM by `VmConfig::to_args` (a \
                 `String` per argument). Times: `--bench argv_alternating`, 61 rounds of 200 \
                 renders of each, in an order rotating every round, median and the 10th–90th \
                 percentiles of the rounds; beside them criterion's median of each \
                 (`--bench argv`, run one after the other). Allocations per render: \
                 `--bench argv_allocs`, a counting global allocator, mean of 100 renders."
            .into(),
        table: vec![
            vec![
                "VM".into(),
                "devices".into(),
                "args".into(),
                "median µs".into(),
                "p10–p90 µs".into(),
                "criterion µs".into(),
                "allocations".into(),
                "bytes allocated".into(),
            ],
            row("Kata default", &d, default_t, criterion[0]),
            row("+64 devices", &b, big_t, criterion[1]),
            row("+64 devices, `to_args`", &v, vec_t, criterion[2]),
        ],
        targets: vec![
            Target {
                what: format!("a 64-device argv in under {TARGET_US} µs (median)"),
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

#[cfg(test)]
mod tests {
    use super::fields;

    #[test]
    fn fields_come_from_the_line_with_the_tag_the_vm_and_their_number() {
        let output = "Compiling x\nargv_time 64_devices 1 2\nargv_time default_vm 4 5 6\n\
                      argv_time 64_devices 7 8 9\n";
        assert_eq!(
            fields(output, "argv_time", "64_devices", 3),
            ["7", "8", "9"]
        );
        assert_eq!(
            fields(output, "argv_time", "default_vm", 3),
            ["4", "5", "6"]
        );
        assert!(fields(output, "argv_allocs", "default_vm", 3).is_empty());
        assert!(fields(output, "argv_time", "64_devices_vec", 3).is_empty());
    }
}
