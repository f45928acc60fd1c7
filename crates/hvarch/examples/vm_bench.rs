//! VM-level measurements for `cargo xtask bench`, on paused arm64 VMs (QEMU under TCG).
//!
//! Usage: `vm_bench <launch|hotplug|scale> <count>`. Every measurement is one output line,
//! `<bench> <series> <value>`, for the xtask to aggregate (medians, p95, ratios):
//!
//! - `launch <runs>`: exec to negotiated QMP, in milliseconds, per run and per method,
//!   interleaved round by round: `hvarch` ([`Vm::launch`]), `raw` (a minimal client on a
//!   socket bound before QEMU starts and handed to it as `fd=3`), `poll` (Kata's way: QEMU
//!   creates the socket, the client tries to connect every 50 ms).
//! - `hotplug <cycles>`: virtio-blk add + delete through a PCIe root port, milliseconds per
//!   cycle, alternating between hvarch's [`hvarch::Hotplugger`] on one VM and the raw QMP
//!   sequence on a second VM of the same configuration.
//! - `scale <vms>`: `<vms>` VMs launched concurrently from this process with
//!   [`hvarch::AsyncVm::launch`] (one task each, on a current-thread runtime), time to all
//!   ready, against one VM launched the same way; this process's RSS growth per VM.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hvarch::hotplug::Placement;
use hvarch::hvarch_arch::resources::BlockDrive;
use hvarch::hvarch_arch::settings::BlockDriver;
use hvarch::hvarch_devices::config::{Monitor, MonitorEndpoint, MonitorMode};
use hvarch::hvarch_devices::fd::{FdArg, FdTable, SharedFd};
use hvarch::{
    assemble, Accelerator, Assembled, AsyncVm, GuestArch, LaunchOptions, Syntax, Vm, VmSpec,
};
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const UNPLUG_TIMEOUT: Duration = Duration::from_secs(5);
const KATA_POLL: Duration = Duration::from_millis(50);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(what), Some(count)) = (args.get(1), args.get(2)) else {
        return Err("usage: vm_bench <launch|hotplug|scale> <count>".into());
    };
    let count: usize = count.parse()?;
    let base = std::env::temp_dir().join(format!("hvarch-vm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    let result = match what.as_str() {
        "launch" => launch(&base, count),
        "hotplug" => hotplug(&base, count),
        "scale" => scale(&base, count),
        other => Err(format!("unknown bench {other}").into()),
    };
    let _ = std::fs::remove_dir_all(&base);
    result
}

/// An arm64 Kata default VM made runnable here (the few lines of `hvarch_tests::spec::runnable`
/// it needs): TCG, paused, no memory locking, empty kernel and initrd, private runtime dir.
fn spec(dir: &Path, id: &str, root_ports: u32) -> Result<VmSpec> {
    let mut spec = VmSpec::kata_default();
    spec.id = id.into();
    spec.arch = Some(GuestArch::Aarch64);
    spec.host_memory_mb = Some(4096);
    spec.host_cpus = Some(4);
    spec.stopped = true;
    let files = dir.join("files");
    std::fs::create_dir_all(&files)?;
    spec.runtime_dir = Some(dir.join("run"));
    let h = &mut spec.hypervisor;
    h.memory_mb = 256;
    h.pcie_root_ports = root_ports;
    h.accelerator = Accelerator::Tcg;
    h.enable_swap = true;
    let kernel = files.join("vmlinux");
    std::fs::write(&kernel, [])?;
    h.kernel_path = Some(kernel);
    if h.initrd_path.is_some() {
        let initrd = files.join("initrd.img");
        std::fs::write(&initrd, [])?;
        h.initrd_path = Some(initrd);
    }
    h.image_path = None;
    Ok(spec)
}

fn assembled(dir: &Path, id: &str, root_ports: u32) -> Result<Assembled> {
    Ok(assemble(&spec(dir, id, root_ports)?)?)
}

fn qmp_monitor(assembled: &mut Assembled) -> Result<&mut Monitor> {
    assembled
        .config
        .monitors
        .iter_mut()
        .find(|m| m.mode == MonitorMode::Control)
        .ok_or_else(|| "the assembled VM has no QMP monitor".into())
}

/// Kills and reaps a QEMU started by a baseline on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `qemu args` with the descriptors of `fds` at their numbers (one `dup2` each, in the
/// child); the table holds at most the QMP listener here.
fn spawn_with_fds(qemu: &Path, args: &[String], fds: &FdTable) -> Result<Qemu> {
    let maps: Vec<(RawFd, RawFd)> = fds
        .mappings()
        .map(|(target, fd)| (fd.as_fd().as_raw_fd(), target))
        .collect();
    if maps
        .iter()
        .any(|&(source, _)| maps.iter().any(|&(_, t)| t == source))
    {
        return Err("descriptor numbers overlap; this minimal launcher does not park them".into());
    }
    let mut command = Command::new(qemu);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child_setup = move || -> std::io::Result<()> {
        for &(source, target) in &maps {
            // SAFETY: dup2 is async-signal-safe; `source` stays open in the parent until the
            // spawn returns, and the copy at `target` has close-on-exec cleared.
            if unsafe { libc::dup2(source, target) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure only calls dup2 (async-signal-safe) and does not allocate.
    unsafe {
        command.pre_exec(child_setup);
    }
    Ok(Qemu(command.spawn()?))
}

/// A minimal QMP client: one line out, lines in until the reply; events are kept.
struct RawClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: String,
    events: Vec<Value>,
}

impl RawClient {
    fn new(stream: UnixStream) -> Result<RawClient> {
        let writer = stream.try_clone()?;
        Ok(RawClient {
            reader: BufReader::new(stream),
            writer,
            line: String::new(),
            events: Vec::new(),
        })
    }

    fn read(&mut self) -> Result<Value> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            return Err("QMP connection closed".into());
        }
        Ok(serde_json::from_str(&self.line)?)
    }

    /// Reads the greeting and negotiates capabilities.
    fn negotiate(&mut self) -> Result<()> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            return Err("no QMP greeting".into());
        }
        self.writer
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
        self.line.clear();
        self.reader.read_line(&mut self.line)?;
        if !self.line.contains("\"return\"") {
            return Err(format!("qmp_capabilities refused: {}", self.line).into());
        }
        Ok(())
    }

    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut text = serde_json::to_vec(&json!({"execute": command, "arguments": arguments}))?;
        text.push(b'\n');
        self.writer.write_all(&text)?;
        loop {
            let mut msg = self.read()?;
            if let Some(ret) = msg.get_mut("return") {
                return Ok(ret.take());
            }
            if let Some(err) = msg.get("error") {
                return Err(format!("{command}: {err}").into());
            }
            self.events.push(msg);
        }
    }

    fn wait_device_deleted(&mut self, id: &str, timeout: Duration) -> Result<()> {
        let is_it = |e: &Value| e["event"] == "DEVICE_DELETED" && e["data"]["device"] == id;
        if let Some(pos) = self.events.iter().position(is_it) {
            self.events.remove(pos);
            return Ok(());
        }
        self.reader.get_ref().set_read_timeout(Some(timeout))?;
        let result = loop {
            match self.read() {
                Ok(e) if is_it(&e) => break Ok(()),
                Ok(e) => self.events.push(e),
                Err(e) => break Err(e),
            }
        };
        self.reader.get_ref().set_read_timeout(None)?;
        self.events.clear();
        result
    }
}

/// The raw known-socket launch: bind, connect, exec QEMU with the listener as `fd=3`, read
/// the greeting, negotiate. The argv is hvarch's for the same VM, rendered beforehand.
fn raw_launch(mut assembled: Assembled) -> Result<(Qemu, RawClient, Duration)> {
    std::fs::create_dir_all(&assembled.paths.dir)?;
    let sock = assembled.paths.qmp.clone();
    let _ = std::fs::remove_file(&sock);
    // Render the argv beforehand (a placeholder descriptor: the first one is `fd=3`), so
    // only bind + exec + greeting is timed.
    let placeholder = OwnedFd::from(std::fs::File::open("/dev/null")?);
    qmp_monitor(&mut assembled)?.endpoint = MonitorEndpoint::Fd(FdArg::from(placeholder));
    let args = assembled.args(Syntax::Options, &mut FdTable::new())?;

    let t = Instant::now();
    let listener = UnixListener::bind(&sock)?;
    let client = UnixStream::connect(&sock)?;
    let mut fds = FdTable::new();
    fds.insert(&SharedFd::from(OwnedFd::from(listener)));
    let qemu = spawn_with_fds(&assembled.qemu_path, &args, &fds)?;
    drop(fds);
    let mut raw = RawClient::new(client)?;
    raw.negotiate()?;
    Ok((qemu, raw, t.elapsed()))
}

/// Kata's launch: QEMU creates the socket; connect right after exec, then every 50 ms.
fn poll_launch(mut assembled: Assembled) -> Result<(Qemu, Duration)> {
    std::fs::create_dir_all(&assembled.paths.dir)?;
    let sock = assembled.paths.qmp.clone();
    let _ = std::fs::remove_file(&sock);
    qmp_monitor(&mut assembled)?.endpoint = MonitorEndpoint::Path(sock.clone());
    let args = assembled.args(Syntax::Options, &mut FdTable::new())?;
    let t = Instant::now();
    let qemu = spawn_with_fds(&assembled.qemu_path, &args, &FdTable::new())?;
    let deadline = t + Duration::from_secs(10);
    let stream = loop {
        match UnixStream::connect(&sock) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(KATA_POLL),
        }
    };
    let mut raw = RawClient::new(stream)?;
    raw.negotiate()?;
    Ok((qemu, t.elapsed()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn launch(base: &Path, runs: usize) -> Result<()> {
    let dir = base.join("launch");
    // Two warm-up rounds (page cache, first exec) are not reported.
    for round in 0..runs + 2 {
        let report = round >= 2;
        let a = assembled(&dir, "launch", 0)?;
        let t = Instant::now();
        let vm = Vm::launch(a, LaunchOptions::default())?;
        let hvarch = t.elapsed();
        drop(vm);

        let (qemu, _client, raw) = raw_launch(assembled(&dir, "launch", 0)?)?;
        drop(qemu);

        let (qemu, poll) = poll_launch(assembled(&dir, "launch", 0)?)?;
        drop(qemu);
        let _ = std::fs::remove_dir_all(dir.join("run"));
        if report {
            println!("launch hvarch {:.3}", ms(hvarch));
            println!("launch raw {:.3}", ms(raw));
            println!("launch poll {:.3}", ms(poll));
        }
    }
    Ok(())
}

fn hotplug(base: &Path, cycles: usize) -> Result<()> {
    let hv_dir = base.join("hotplug-hvarch");
    let raw_dir = base.join("hotplug-raw");
    let mut vm = Vm::launch(assembled(&hv_dir, "hp", 1)?, LaunchOptions::default())?;
    let raw_assembled = assembled(&raw_dir, "hp", 1)?;
    let (_qemu, mut raw, _) = raw_launch(raw_assembled)?;

    let image = base.join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20])?;
    let disk = BlockDrive {
        file: image.clone(),
        format: "raw".into(),
        id: "drive0".into(),
        read_only: false,
        share_rw: false,
        index: 0,
    };
    let filename = image.to_str().ok_or("image path is not UTF-8")?.to_owned();
    let port = vm
        .hotplug_state()
        .free_root_ports()
        .first()
        .map(|p| p.to_string())
        .ok_or("no free root port")?;

    let hvarch_cycle = |vm: &mut Vm| -> Result<Duration> {
        let t = Instant::now();
        let plugged = vm
            .hotplug()
            .add_block(&disk, BlockDriver::VirtioBlk, Placement::Auto)?;
        vm.hotplug().unplug(&plugged.id, UNPLUG_TIMEOUT)?;
        Ok(t.elapsed())
    };
    let raw_cycle = |raw: &mut RawClient| -> Result<Duration> {
        let t = Instant::now();
        raw.execute(
            "blockdev-add",
            json!({"driver": "raw", "node-name": "drive0",
                   "file": {"driver": "file", "filename": filename}}),
        )?;
        raw.execute(
            "device_add",
            json!({"driver": "virtio-blk-pci", "id": "virtio-drive0", "drive": "drive0",
                   "bus": port, "share-rw": true}),
        )?;
        raw.execute("device_del", json!({"id": "virtio-drive0"}))?;
        raw.wait_device_deleted("virtio-drive0", UNPLUG_TIMEOUT)?;
        raw.execute("blockdev-del", json!({"node-name": "drive0"}))?;
        Ok(t.elapsed())
    };
    for round in 0..cycles + 3 {
        let h = hvarch_cycle(&mut vm)?;
        let r = raw_cycle(&mut raw)?;
        if round >= 3 {
            println!("hotplug hvarch {:.3}", ms(h));
            println!("hotplug raw {:.3}", ms(r));
        }
    }
    drop(vm);
    Ok(())
}

/// `VmRSS` of process `pid` (`self` for this one), in KiB.
fn rss_kib(pid: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

/// Launches a VM with `AsyncVm::launch`; ready = `query-status` answered.
async fn launch_async(a: Assembled) -> Result<AsyncVm> {
    let vm = AsyncVm::launch(a, LaunchOptions::default()).await?;
    vm.status().await?;
    Ok(vm)
}

fn scale(base: &Path, vms: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // The baseline: one VM launched the same way, median of 3.
        let mut single = Vec::new();
        for i in 0..4 {
            let a = assembled(&base.join(format!("single{i}")), &format!("single{i}"), 0)?;
            let t = Instant::now();
            let mut vm = launch_async(a).await?;
            let e = t.elapsed();
            vm.shutdown(Duration::ZERO).await?;
            if i > 0 {
                single.push(ms(e));
            }
        }
        single.sort_by(f64::total_cmp);
        println!("scale single_ms {:.3}", single[single.len() / 2]);

        let mut prepared = Vec::new();
        for i in 0..vms {
            prepared.push(assembled(
                &base.join(format!("vm{i}")),
                &format!("vm{i}"),
                0,
            )?);
        }
        let before = rss_kib("self")?;
        let t = Instant::now();
        let tasks: Vec<_> = prepared
            .into_iter()
            .map(|a| tokio::spawn(launch_async(a)))
            .collect();
        let mut running = Vec::new();
        for task in tasks {
            running.push(task.await??);
        }
        let all = t.elapsed();
        let after = rss_kib("self")?;
        let mut qemu_rss = 0;
        for vm in &running {
            qemu_rss += rss_kib(&vm.pid().to_string())?;
        }
        let n = running.len() as f64;
        println!("scale vms {}", running.len());
        println!("scale all_ready_ms {:.3}", ms(all));
        println!("scale rss_before_kib {before}");
        println!("scale rss_after_kib {after}");
        println!(
            "scale rss_per_vm_kib {:.1}",
            after.saturating_sub(before) as f64 / n
        );
        println!("scale qemu_rss_per_vm_kib {:.1}", qemu_rss as f64 / n);
        for mut vm in running {
            vm.shutdown(Duration::ZERO).await?;
        }
        Ok(())
    })
}
