//! The demo flow, written once for `cargo xtask demo` and the `demo_guest` test: boot the
//! arm64 guest of [`crate::guest`] through [`hvarch::Vm`], hot-plug a disk and memory, see the
//! guest confirm both on its console, unplug the disk, see that too, power off, and time
//! every step.

use std::path::Path;
use std::time::{Duration, Instant};

use hvarch::{assemble, LaunchOptions, Vm};

use crate::guest::{self, Console, GuestFiles, GuestOptions, GuestState, BYE_MARKER, READY_MARKER};

/// How long the guest may take to reach its marker (UEFI under TCG included).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the guest may take to see a hot-plugged device.
pub const HOTPLUG_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an unplug may take (Linux's pciehp waits 5 s for the attention button).
pub const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);
/// Memory hot-plugged by the demo, in MiB.
pub const HOTPLUG_MEMORY_MB: u64 = 256;
/// The size of the hot-plugged disk, in bytes.
pub const HOTPLUG_DISK_BYTES: u64 = 64 << 20;
/// The id of the hot-plugged disk.
pub const DISK_ID: &str = "demo-disk";

/// What the demo measured.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// `Vm::launch` until QMP was negotiated.
    pub launch_to_qmp: Duration,
    /// `cont` until the guest's ready marker.
    pub boot_to_marker: Duration,
    /// The disk's `device_add` until the guest listed it.
    pub disk_seen: Duration,
    /// The memory's `device_add` until the guest's `MemTotal` grew by all of it.
    pub memory_seen: Duration,
    /// `device_del` until the guest no longer listed the disk.
    pub unplug_seen: Duration,
    /// `poweroff` sent until QEMU exited.
    pub shutdown: Duration,
}

impl Timings {
    /// The timings as a small table, one row per step.
    pub fn table(&self) -> String {
        let rows = [
            ("launch to QMP ready", self.launch_to_qmp),
            ("boot to guest marker", self.boot_to_marker),
            ("disk hot-plug seen by guest", self.disk_seen),
            ("memory hot-plug seen by guest", self.memory_seen),
            ("disk unplug seen by guest", self.unplug_seen),
            ("poweroff to QEMU exit", self.shutdown),
        ];
        let mut out = String::from("step                            time\n");
        out.push_str("------------------------------  ----------\n");
        for (name, time) in rows {
            out.push_str(&format!("{name:<30}  {:>7} ms\n", time.as_millis()));
        }
        out
    }
}

/// What the demo saw.
#[derive(Clone, Debug)]
pub struct Report {
    /// The timings.
    pub timings: Timings,
    /// The guest's kernel release (from its marker line).
    pub kernel: String,
    /// The guest's state after boot.
    pub booted: GuestState,
    /// After the disk was plugged.
    pub with_disk: GuestState,
    /// After the memory was plugged.
    pub with_memory: GuestState,
    /// After the disk was unplugged.
    pub after_unplug: GuestState,
    /// QEMU's pid (gone once the demo returns).
    pub qemu_pid: u32,
    /// Everything the guest printed.
    pub transcript: String,
}

/// Where the demo reports progress and the guest's console.
pub trait Observer {
    /// One line per step.
    fn step(&mut self, text: &str);
    /// A line from the guest's console (called from the console reader thread's data, in
    /// order).
    fn guest(&mut self, _line: &str) {}
}

/// An observer that prints nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn step(&mut self, _text: &str) {}
}

/// Runs the demo in `dir` (runtime directory and the per-VM UEFI variable store; the caller
/// owns and removes it). Any failure returns an error carrying the guest's console so far;
/// the VM is always killed and reaped before returning.
pub fn run(files: &GuestFiles, dir: &Path, observer: &mut dyn Observer) -> Result<Report, String> {
    observer.step("building the initramfs (busybox, virtio_blk, /init) in Rust");
    let initramfs = guest::initramfs(files)?;
    let options = GuestOptions::new("demo", dir);
    let spec = guest::guest_spec(files, &initramfs, &options)?;
    let assembled = assemble(&spec).map_err(|e| format!("assemble the guest: {e}"))?;
    observer.step(&format!(
        "launching {} (TCG, UEFI, kernel {})",
        assembled.qemu_path.display(),
        files.release
    ));
    let mut timings = Timings::default();
    let started = Instant::now();
    let mut vm = Vm::launch(assembled, LaunchOptions::default())
        .map_err(|e| format!("launch the guest: {e}"))?;
    timings.launch_to_qmp = started.elapsed();
    let qemu_pid = vm.pid();
    observer.step(&format!(
        "QMP ready in {} ms (pid {qemu_pid})",
        timings.launch_to_qmp.as_millis()
    ));
    let console = Console::connect(&vm.paths().console, None)?;
    let result = drive(&mut vm, &console, &mut timings, observer);
    let result = result.map_err(|e| {
        format!(
            "{e}\n--- guest console ---\n{}\n--- QEMU stderr ---\n{}",
            console.transcript_text(),
            vm.stderr()
        )
    });
    let (kernel, booted, with_disk, with_memory, after_unplug) = match result {
        Ok(states) => states,
        Err(e) => {
            let _ = vm.shutdown(Duration::from_secs(1));
            return Err(e);
        }
    };
    Ok(Report {
        timings,
        kernel,
        booted,
        with_disk,
        with_memory,
        after_unplug,
        qemu_pid,
        transcript: console.transcript_text(),
    })
}

type States = (String, GuestState, GuestState, GuestState, GuestState);

fn drive(
    vm: &mut Vm,
    console: &Console,
    timings: &mut Timings,
    observer: &mut dyn Observer,
) -> Result<States, String> {
    observer.step("starting the vCPUs (cont); waiting for the guest's marker on hvc0");
    let cont = Instant::now();
    vm.resume().map_err(|e| format!("cont: {e}"))?;
    let marker = console.wait_for("ready marker", BOOT_TIMEOUT, |l| {
        l.starts_with(READY_MARKER)
    })?;
    timings.boot_to_marker = marker.at - cont;
    let kernel = marker
        .text
        .split("kernel=")
        .nth(1)
        .unwrap_or("?")
        .to_owned();
    observer.guest(&marker.text);
    let (booted, _) = console.wait_state("initial state", HOTPLUG_TIMEOUT, |_| true)?;
    observer.step(&format!(
        "guest up in {} ms: kernel {kernel}, disks [{}], MemTotal {} KiB",
        timings.boot_to_marker.as_millis(),
        booted.disks.join(","),
        booted.mem_kb
    ));

    observer.step(&format!(
        "hot-plugging a {} MiB virtio-blk disk `{DISK_ID}` on a root port",
        HOTPLUG_DISK_BYTES >> 20
    ));
    let t = Instant::now();
    hotplug::add_disk(vm)?;
    let before = booted.disks.clone();
    let (with_disk, at) = console.wait_state("the new disk", HOTPLUG_TIMEOUT, |s| {
        s.disks.len() > before.len()
    })?;
    timings.disk_seen = at - t;
    observer.guest(&state_line(&with_disk));
    observer.step(&format!(
        "guest sees disks [{}] after {} ms",
        with_disk.disks.join(","),
        timings.disk_seen.as_millis()
    ));

    observer.step(&format!(
        "hot-plugging {HOTPLUG_MEMORY_MB} MiB of memory (pc-dimm)"
    ));
    let t = Instant::now();
    hotplug::add_memory(vm)?;
    let base = with_disk.mem_kb;
    // The guest brings the DIMM online one memory block (128 MiB on arm64) at a time and
    // reports each step: wait for all of it.
    let (with_memory, at) = console.wait_state("all the memory", HOTPLUG_TIMEOUT, |s| {
        s.mem_kb >= base + HOTPLUG_MEMORY_MB * 1024
    })?;
    timings.memory_seen = at - t;
    observer.guest(&state_line(&with_memory));
    observer.step(&format!(
        "guest MemTotal {} -> {} KiB (+{} MiB) after {} ms",
        base,
        with_memory.mem_kb,
        (with_memory.mem_kb - base) / 1024,
        timings.memory_seen.as_millis()
    ));

    observer.step(&format!("unplugging `{DISK_ID}` (device_del)"));
    let t = Instant::now();
    hotplug::remove_disk(vm)?;
    let (after_unplug, at) =
        console.wait_state("the disk gone", UNPLUG_TIMEOUT, |s| s.disks == before)?;
    timings.unplug_seen = at - t;
    observer.guest(&state_line(&after_unplug));
    observer.step(&format!(
        "guest sees disks [{}] after {} ms",
        after_unplug.disks.join(","),
        timings.unplug_seen.as_millis()
    ));

    observer.step("asking the guest to power off (`poweroff` on hvc0)");
    let t = Instant::now();
    console.send("poweroff")?;
    console.wait_for("goodbye", HOTPLUG_TIMEOUT, |l| l.starts_with(BYE_MARKER))?;
    vm.wait_timeout(Duration::from_secs(30))
        .map_err(|e| e.to_string())?
        .ok_or("QEMU did not exit within 30 s of the guest's poweroff")?;
    timings.shutdown = t.elapsed();
    let outcome = vm
        .shutdown(Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    if !outcome.powered_off() || !outcome.status.success() {
        return Err(format!(
            "the VM did not end by the guest's power-off: {outcome}"
        ));
    }
    let status = outcome.status;
    observer.step(&format!(
        "guest powered off, QEMU exited ({status}) after {} ms",
        timings.shutdown.as_millis()
    ));
    Ok((kernel, booted, with_disk, with_memory, after_unplug))
}

fn state_line(state: &GuestState) -> String {
    format!(
        "{} disks={} mem_kb={}",
        guest::STATE_PREFIX,
        state.disks.join(","),
        state.mem_kb
    )
}

/// The hotplug steps, through hvarch's hotplug API ([`Vm::hotplug`]).
mod hotplug {
    use super::*;
    use hvarch::hotplug::Placement;
    use hvarch::hvarch_arch::resources::BlockDrive;
    use hvarch::hvarch_arch::settings::BlockDriver;

    /// The guest-visible id of the disk (`virtio-<drive id>`, as Kata names it).
    pub fn disk_device_id() -> String {
        format!("virtio-{DISK_ID}")
    }

    /// A sparse raw image in the runtime directory, on a free PCIe root port.
    pub fn add_disk(vm: &mut Vm) -> Result<(), String> {
        let image = vm.paths().dir.join("demo-disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(HOTPLUG_DISK_BYTES))
            .map_err(|e| format!("create {}: {e}", image.display()))?;
        let drive = BlockDrive {
            file: image,
            format: "raw".into(),
            id: DISK_ID.into(),
            read_only: false,
            share_rw: false,
            index: 0,
        };
        vm.hotplug()
            .add_block(&drive, BlockDriver::VirtioBlk, Placement::RootPort)
            .map(drop)
            .map_err(|e| format!("hot-plug the disk: {e}"))
    }

    /// A pc-dimm (UEFI gives the guest the ACPI it needs).
    pub fn add_memory(vm: &mut Vm) -> Result<(), String> {
        vm.hotplug()
            .add_memory(HOTPLUG_MEMORY_MB)
            .map(drop)
            .map_err(|e| format!("hot-plug memory: {e}"))
    }

    /// `device_del` and the wait for `DEVICE_DELETED` (the guest must release the port).
    pub fn remove_disk(vm: &mut Vm) -> Result<(), String> {
        vm.hotplug()
            .unplug(&disk_device_id(), UNPLUG_TIMEOUT)
            .map_err(|e| format!("unplug the disk: {e}"))
    }
}
