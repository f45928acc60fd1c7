//! The report: one section per benchmark (method, table, targets), as Markdown.

use std::fmt::Write;

/// One benchmark's results.
pub struct Section {
    /// The heading, e.g. "Launch to ready".
    pub title: &'static str,
    /// What was measured and how (a paragraph).
    pub method: String,
    /// A table: the header row first.
    pub table: Vec<Vec<String>>,
    /// The targets and whether they were met.
    pub targets: Vec<Target>,
    /// Ratios for the chart (higher is better).
    pub bars: Vec<Bar>,
    /// Remarks (why a target is missed, caveats).
    pub notes: Vec<String>,
}

/// A target of the issue, checked against this run (reported, never asserted).
pub struct Target {
    /// The target, e.g. "QMP round trips ≥ 0.95× the raw client (blocking)".
    pub what: String,
    /// This run's figure.
    pub figure: String,
    /// Met or not.
    pub met: bool,
}

/// One bar of the chart: hvarch relative to a baseline, higher is better.
pub struct Bar {
    /// The label, e.g. "qmp seq: blocking / raw".
    pub label: String,
    /// The ratio (1.0 = as fast as the baseline).
    pub ratio: f64,
    /// The target ratio, if the issue sets one.
    pub target: Option<f64>,
}

/// `x` with `digits` decimals, or "n/a".
pub fn fmt(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "n/a".into()
    }
}

/// A ratio as "0.97×".
pub fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "n/a".into()
    }
}

/// One section in Markdown.
pub fn section_markdown(s: &Section) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {}\n\n{}\n", s.title, s.method);
    if let Some((head, rows)) = s.table.split_first() {
        let _ = writeln!(out, "| {} |", head.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
        for row in rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out.push('\n');
    }
    for t in &s.targets {
        let verdict = if t.met { "met" } else { "**missed**" };
        let _ = writeln!(out, "- Target: {} — {}: {verdict}", t.what, t.figure);
    }
    if !s.targets.is_empty() {
        out.push('\n');
    }
    for note in &s.notes {
        let _ = writeln!(out, "{note}\n");
    }
    out
}

/// The whole report.
pub fn markdown(sections: &[Section], what: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# hvarch benchmarks (`cargo xtask bench {what}`)\n");
    let _ = writeln!(
        out,
        "One run on this machine ({}, {} cores, QEMU under TCG, arm64 `virt` guests, paused). \
         Every ratio compares figures measured in this same run; repeated measurements are \
         summarised by their median. Chart: `report.svg` (ratios, higher is better).\n",
        host(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let targets: Vec<&Target> = sections.iter().flat_map(|s| &s.targets).collect();
    if !targets.is_empty() {
        let _ = writeln!(out, "## Targets\n\n| target | this run | |\n|---|---|---|");
        for t in targets {
            let verdict = if t.met { "met" } else { "**missed**" };
            let _ = writeln!(out, "| {} | {} | {verdict} |", t.what, t.figure);
        }
        out.push('\n');
    }
    for s in sections {
        out.push_str(&section_markdown(s));
    }
    out
}

fn host() -> String {
    let qemu = std::process::Command::new("qemu-system-aarch64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "QEMU version unknown".into());
    format!("{} {}", std::env::consts::ARCH, qemu.trim())
}
