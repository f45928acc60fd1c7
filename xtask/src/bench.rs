//! `cargo xtask bench [launch|qmp|hotplug|argv|scale]`: hvarch against its peers, measured in
//! one run, reported as ratios (all benchmarks when none is named).
//!
//! Figures on these machines are noisy (2 cores, QEMU under TCG, other builds running): every
//! figure is compared only with a baseline measured in the same run, and repeated
//! measurements are summarised by their median (and p95 where latency matters). The report is
//! `target/bench/report.md`, with a chart of the ratios in `target/bench/report.svg`.
//!
//! The measured clients are release binaries: `crates/hvarch/examples/vm_bench.rs` (launch,
//! hotplug, scale), `crates/hvarch-qmp/examples/qmp_bench.rs` (QMP round trips), and the
//! `argv` / `argv_allocs` benches of `hvarch-tests`; Python's `qemu.qmp` runs from a venv
//! under `target/bench/venv`.

mod argv;
mod chart;
mod hotplug;
mod launch;
mod qmp;
mod report;
mod scale;
mod stats;

use std::path::PathBuf;

use crate::run::{cargo, workspace_root, Step};

/// The benchmarks, in report order.
const ALL: [&str; 5] = ["launch", "qmp", "hotplug", "argv", "scale"];

/// Runs the benchmark named `what` (all of them when `None`) and writes the report.
pub fn run(what: Option<&str>) -> Result<(), String> {
    let selected: Vec<&str> = match what {
        None | Some("all") => ALL.to_vec(),
        Some(name) if ALL.contains(&name) => vec![name],
        Some(other) => {
            return Err(format!(
                "unknown benchmark `{other}` (known: {})",
                ALL.join(", ")
            ))
        }
    };
    let dir = bench_dir()?;
    let needs_vm = selected
        .iter()
        .any(|w| matches!(*w, "launch" | "hotplug" | "scale"));
    if needs_vm {
        eprintln!("==> building the VM bench client (release)");
        cargo(&[
            "build",
            "--release",
            "-p",
            "hvarch",
            "--features",
            "tokio",
            "--example",
            "vm_bench",
        ])
        .run()?;
    }
    let mut sections = Vec::new();
    for name in selected {
        eprintln!("\n==> bench {name}");
        let section = match name {
            "launch" => launch::run(),
            "qmp" => qmp::run(&dir),
            "hotplug" => hotplug::run(),
            "argv" => argv::run(),
            _ => scale::run(),
        }?;
        eprintln!("{}", report::section_markdown(&section));
        sections.push(section);
    }
    let md = dir.join("report.md");
    let svg = dir.join("report.svg");
    let text = report::markdown(&sections, what.unwrap_or("all"));
    std::fs::write(&md, text).map_err(|e| format!("write {}: {e}", md.display()))?;
    chart::draw(&sections, &svg)?;
    eprintln!("\nreport: {}\nchart:  {}", md.display(), svg.display());
    Ok(())
}

/// `target/bench`, created.
fn bench_dir() -> Result<PathBuf, String> {
    let dir = workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Runs `target/release/examples/vm_bench <what> <count>` and returns its `<series> <value>`
/// lines for `what`.
fn vm_bench(what: &str, count: usize) -> Result<Vec<(String, f64)>, String> {
    let client = workspace_root().join("target/release/examples/vm_bench");
    let out = Step::new(&client, &[what, &count.to_string()])
        .output()
        .ok_or_else(|| format!("`vm_bench {what} {count}` failed (run it by hand to see why)"))?;
    Ok(out
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next() == Some(what)).then_some(())?;
            let series = parts.next()?.to_owned();
            let value = parts.next()?.parse().ok()?;
            Some((series, value))
        })
        .collect())
}

/// The values of `series` in `lines`.
fn series(lines: &[(String, f64)], name: &str) -> Vec<f64> {
    lines
        .iter()
        .filter(|(s, _)| s == name)
        .map(|(_, v)| *v)
        .collect()
}
