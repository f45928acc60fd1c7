//! Scale: 32 paused VMs launched concurrently from one process with the async client.

use super::report::{fmt, ratio, Bar, Section};
use super::stats::median;

const VMS: usize = 32;
const REPEATS: usize = 3;

pub fn run() -> Result<Section, String> {
    let mut single = Vec::new();
    let mut all = Vec::new();
    let mut per_vm = Vec::new();
    let mut qemu_per_vm = Vec::new();
    for _ in 0..REPEATS {
        let lines = super::vm_bench("scale", VMS)?;
        single.extend(super::series(&lines, "single_ms"));
        all.extend(super::series(&lines, "all_ready_ms"));
        per_vm.extend(super::series(&lines, "rss_per_vm_kib"));
        qemu_per_vm.extend(super::series(&lines, "qemu_rss_per_vm_kib"));
    }
    if all.len() != REPEATS {
        return Err("scale: the bench client printed no result".into());
    }
    let (single, all) = (median(&single), median(&all));
    let speedup = VMS as f64 * single / all;
    Ok(Section {
        title: "Scale",
        method: format!(
            "{VMS} paused arm64 VMs launched at once from one process with `AsyncVm::launch` \
             (a tokio current-thread runtime, one task per VM, ready when its `query-status` \
             is answered). Baseline: one VM launched the same way in the same process (median \
             of 3). Memory: this process's `VmRSS` growth from just before the launches to \
             all ready, divided by {VMS} (each VM holds an `AsyncVm`: its QMP client's tasks, \
             its event subscriptions and QEMU's pidfd). Medians of {REPEATS} repetitions."
        ),
        table: vec![
            vec!["figure".into(), "value".into()],
            vec![
                format!("time to all {VMS} ready"),
                format!("{} ms", fmt(all, 0)),
            ],
            vec!["one VM alone".into(), format!("{} ms", fmt(single, 1))],
            vec![
                format!("{VMS} sequential launches / concurrent time"),
                ratio(speedup),
            ],
            vec![
                "our RSS per VM".into(),
                format!("{} KiB", fmt(median(&per_vm), 0)),
            ],
            vec![
                "QEMU's RSS per VM (for scale)".into(),
                format!("{} MiB", fmt(median(&qemu_per_vm) / 1024.0, 1)),
            ],
        ],
        targets: Vec::new(),
        bars: vec![Bar {
            label: format!("scale: {VMS}× one launch / all {VMS} ready"),
            ratio: speedup,
            target: None,
        }],
        notes: vec![format!(
            "On 2 cores the {VMS} QEMUs' own start (TCG init, {} MiB each) is the limit: \
             concurrency buys {} over launching them one after another.",
            fmt(median(&qemu_per_vm) / 1024.0, 0),
            ratio(speedup)
        )],
    })
}
