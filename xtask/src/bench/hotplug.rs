//! Hotplug: virtio-blk add + delete through a PCIe root port on a paused arm64 VM, hvarch's
//! `Hotplugger` against the raw QMP sequence on a second VM of the same configuration.

use super::report::{fmt, ratio, Bar, Section, Target};
use super::stats::{median, p95};

const CYCLES: usize = 30;

/// Issue 14: a hotplug cycle at most this many times the raw QMP sequence's.
const TARGET_VS_RAW: f64 = 1.03;

pub fn run() -> Result<Section, String> {
    let lines = super::vm_bench("hotplug", CYCLES)?;
    let hvarch = super::series(&lines, "hvarch");
    let raw = super::series(&lines, "raw");
    if hvarch.len() != CYCLES || raw.len() != CYCLES {
        return Err(format!("hotplug: expected {CYCLES} cycles of each"));
    }
    let vs_raw = median(&hvarch) / median(&raw);
    let row = |name: &str, v: &[f64]| {
        vec![
            name.to_owned(),
            fmt(median(v), 2),
            fmt(p95(v), 2),
            ratio(median(v) / median(&raw)),
        ]
    };
    Ok(Section {
        title: "Hotplug",
        method: format!(
            "A virtio-blk (a 1 MiB raw file) hot-plugged and unplugged through a cold-plugged \
             PCIe root port of a paused arm64 `virt` VM (Kata's default, 1 root port), ms per \
             add + delete cycle, {CYCLES} cycles each after 3 unreported, alternating between \
             two VMs of the same configuration. **hvarch**: `vm.hotplug().add_block(…, \
             VirtioBlk, Placement::Auto)` then `unplug(id, 5 s)` (placement, the arch \
             backend's device, the guest PCI path computed from the configuration, the \
             engine and its drain of `DEVICE_DELETED`, rollback bookkeeping). \
             **raw**: `blockdev-add`, `device_add`, `device_del` + wait for `DEVICE_DELETED`, \
             `blockdev-del` on a minimal client."
        ),
        table: vec![
            vec![
                "client".into(),
                "median ms/cycle".into(),
                "p95 ms".into(),
                "vs raw".into(),
            ],
            row("hvarch Hotplugger", &hvarch),
            row("raw QMP sequence", &raw),
        ],
        targets: vec![Target {
            what: format!("hotplug cycle ≤ {TARGET_VS_RAW}× the raw QMP sequence (median)"),
            figure: ratio(vs_raw),
            met: vs_raw <= TARGET_VS_RAW,
        }],
        bars: vec![Bar {
            label: "hotplug: raw time / hvarch time".into(),
            ratio: 1.0 / vs_raw,
            target: Some(1.0 / TARGET_VS_RAW),
        }],
        notes: vec![format!(
            "hvarch's cycle costs {} the raw sequence's: the same four commands (no \
             `query-pci`: the root port's slot is computed from the configuration); its extra \
             work is the reader thread routing `DEVICE_DELETED` to the waiter and the slot and \
             rollback bookkeeping. QEMU's own device realize and unrealize dominate both.",
            ratio(vs_raw)
        )],
    })
}
