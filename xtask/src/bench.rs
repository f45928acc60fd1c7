//! `cargo xtask bench [qmp]`: throughput comparisons that are not tests.
//!
//! `qmp`: sequential `query-status` round trips per second against one paused QEMU
//! (qemu-system-aarch64, TCG) for hvarch-qmp's blocking and async clients, a minimal raw-socket
//! client, and Python's `qemu.qmp` (installed with pip into `target/bench/venv` when possible),
//! all in the same run. Prints rates and ratios; QEMU's main loop is the limit, so only ratios
//! from one run are comparable.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::run::{cargo, workspace_root, Step};

const ROUND_TRIPS: u32 = 2000;

const PYTHON_CLIENT: &str = r#"
import asyncio, sys, time
from qemu.qmp import QMPClient

async def main(path, n):
    client = QMPClient("bench")
    await client.connect(path)
    t = time.perf_counter()
    for _ in range(n):
        await client.execute("query-status")
    elapsed = time.perf_counter() - t
    await client.disconnect()
    print(f"python {n} {elapsed:.6f}")

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"#;

/// Runs the benchmark named `what` (default: all, currently `qmp`).
pub fn run(what: Option<&str>) -> Result<(), String> {
    match what {
        None | Some("qmp") => qmp(),
        Some(other) => Err(format!("unknown benchmark `{other}` (known: qmp)")),
    }
}

/// Kills and reaps QEMU on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qmp() -> Result<(), String> {
    let root = workspace_root();
    let bench_dir = root.join("target").join("bench");
    std::fs::create_dir_all(&bench_dir)
        .map_err(|e| format!("create {}: {e}", bench_dir.display()))?;

    eprintln!("==> building the bench client (release)");
    cargo(&[
        "build",
        "--release",
        "-p",
        "hvarch-qmp",
        "--example",
        "qmp_bench",
        "--features",
        "tokio",
    ])
    .run()?;
    let client = root.join("target/release/examples/qmp_bench");

    let python = python_venv(&bench_dir);

    let sock = bench_dir.join(format!("qmp-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let _qemu = start_qemu(&sock)?;

    let n = ROUND_TRIPS.to_string();
    let sock_str = sock.to_str().ok_or("socket path is not UTF-8")?;
    let mut rates: Vec<(String, f64)> = Vec::new();
    for kind in ["raw", "blocking", "async"] {
        let out = Step::new(&client, &[kind, sock_str, &n])
            .output()
            .ok_or_else(|| format!("bench client `{kind}` failed"))?;
        rates.push((kind.to_owned(), parse_rate(&out)?));
    }
    match &python {
        Some(py) => {
            let out = Step::new(py, &["-c", PYTHON_CLIENT, sock_str, &n]).output();
            match out.map(|o| parse_rate(&o)) {
                Some(Ok(rate)) => rates.push(("python qemu.qmp".into(), rate)),
                _ => eprintln!("note: the Python qemu.qmp client failed; skipped"),
            }
        }
        None => eprintln!("note: could not install qemu.qmp with pip; the Python peer is skipped"),
    }
    let _ = std::fs::remove_file(&sock);

    let get = |name: &str| rates.iter().find(|(k, _)| k == name).map(|(_, r)| *r);
    let raw = get("raw");
    let py = get("python qemu.qmp");
    println!(
        "\nquery-status round trips, {ROUND_TRIPS} sequential per client, one QEMU (TCG, paused)\n"
    );
    println!(
        "{:<18} {:>12} {:>10} {:>12}",
        "client", "round trips/s", "vs raw", "vs python"
    );
    for (name, rate) in &rates {
        let ratio =
            |base: Option<f64>| base.map_or("-".to_owned(), |b| format!("{:.2}x", rate / b));
        println!(
            "{name:<18} {rate:>12.0} {:>10} {:>12}",
            ratio(raw),
            ratio(py)
        );
    }
    Ok(())
}

fn parse_rate(output: &str) -> Result<f64, String> {
    let line = output.lines().last().unwrap_or_default();
    let mut parts = line.split_whitespace().skip(1);
    let count: f64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad bench output {line:?}"))?;
    let secs: f64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad bench output {line:?}"))?;
    if secs <= 0.0 {
        return Err(format!("bad bench output {line:?}"));
    }
    Ok(count / secs)
}

fn start_qemu(sock: &Path) -> Result<Qemu, String> {
    let child = Command::new("qemu-system-aarch64")
        .args([
            "-machine",
            "virt,accel=tcg",
            "-cpu",
            "max",
            "-m",
            "256M",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-S", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-aarch64: {e} (run `cargo xtask setup`)"))?;
    let mut qemu = Qemu(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(sock).is_err() {
        if let Ok(Some(status)) = qemu.0.try_wait() {
            return Err(format!(
                "QEMU exited with {status} before its QMP socket was ready"
            ));
        }
        if Instant::now() > deadline {
            return Err("QEMU's QMP socket did not appear within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // That probe connection took QEMU's single monitor slot briefly; let it notice the close.
    std::thread::sleep(Duration::from_millis(50));
    Ok(qemu)
}

/// `target/bench/venv/bin/python` with qemu.qmp installed, or `None` if that is not possible.
fn python_venv(bench_dir: &Path) -> Option<PathBuf> {
    let venv = bench_dir.join("venv");
    let python = venv.join("bin/python");
    let has_qmp = |py: &Path| Step::new(py, &["-c", "import qemu.qmp"]).output().is_some();
    if python.exists() && has_qmp(&python) {
        return Some(python);
    }
    eprintln!("==> creating {} and installing qemu.qmp", venv.display());
    let venv_str = venv.to_str()?;
    Step::new("python3", &["-m", "venv", venv_str]).run().ok()?;
    Step::new(&python, &["-m", "pip", "install", "--quiet", "qemu.qmp"])
        .run()
        .ok()?;
    has_qmp(&python).then_some(python)
}
