//! `hvarch run`: launch the VM of a spec and attach its console (hvc0) to the terminal.
//!
//! The VM starts with its vCPUs paused, the console socket is connected, and only then the
//! vCPUs run, so no early output is lost. Standard input goes to the guest, the guest's
//! console to standard output; when standard input is a terminal it is put in raw mode
//! (signals kept: Ctrl-C still interrupts) and restored on exit. Progress lines go to stderr.
//!
//! QEMU runs in a process group of its own: the terminal's Ctrl-C (SIGINT) and SIGHUP reach
//! `hvarch run` only, which asks the guest to power off; QEMU dies with `hvarch run` if that
//! is killed. Under systemd use `KillMode=mixed` (the default `control-group` sends SIGTERM to
//! QEMU too) and a `TimeoutStopSec` longer than `--grace`.
//!
//! How it ends, and the exit status (the truth about how QEMU ended, see
//! [`hvarch::ShutdownOutcome`]):
//!
//! - The guest powers off (on its own, or asked by Ctrl-C, SIGINT, SIGTERM or SIGHUP through
//!   `system_powerdown`): exit 0.
//! - Asked to stop, the guest did not power off within `--grace` seconds: QEMU was told to
//!   quit, or killed when it did not: exit 1, saying which.
//! - QEMU ended on its own (killed by a signal `hvarch` did not send, a guest reset or panic
//!   under `-no-reboot`, a failure): exit 1, saying what happened, with QEMU's stderr.
//!
//! While it runs, a second QMP monitor is open for people and scripts:
//! `hvarch qmp <runtime_dir>/qmp-user.sock` (the first one is the library's).

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use hvarch::hvarch_devices::config::{Monitor, MonitorEndpoint};
use hvarch::{assemble, EndedBy, GuestArch, LaunchOptions, ShutdownOutcome, Vm};
use hvarch_qmp::EventFilter;

use crate::cmd::cmdline::{apply_overrides, parse_arch, Accel};
use crate::cmd::probe;
use crate::spec_file;

/// The extra QMP socket `hvarch run` opens in the runtime directory.
pub const USER_QMP_SOCKET: &str = "qmp-user.sock";
/// The chardev id of that monitor.
pub const USER_QMP_ID: &str = "qmp-user";

/// Arguments of `hvarch run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Guest architecture: aarch64 (arm64), x86_64 (amd64), ppc64le or s390x (overrides the
    /// spec's `arch`; default: the spec's, else the host's).
    #[arg(long, value_parser = parse_arch)]
    pub arch: Option<GuestArch>,
    /// Accelerator (overrides the spec's `hypervisor.accelerator`).
    #[arg(long, value_enum)]
    pub accel: Option<Accel>,
    /// Seconds the guest gets to power off after Ctrl-C (or SIGTERM, SIGHUP) before QEMU is
    /// told to quit. Any number is accepted; one too large to count to means no limit.
    #[arg(long, default_value_t = 10)]
    pub grace: u64,
    /// The VM spec (TOML).
    pub spec: PathBuf,
}

/// The signal that asked us to stop (0: none yet).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
}

fn install_signal_handlers() -> Result<(), String> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler
        // only stores into an atomic, which is async-signal-safe.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(format!(
                "cannot install a signal handler: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Puts a terminal in raw mode (keeping ISIG, so Ctrl-C still signals) until dropped.
struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    fn enable(fd: i32) -> Option<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it for a valid terminal fd and
        // reports failure otherwise.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            raw.c_lflag |= libc::ISIG;
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawMode { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read from the same fd in `enable`.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

/// Runs the subcommand.
pub fn run(args: &Args) -> Result<(), String> {
    let mut spec = spec_file::load(&args.spec)?;
    apply_overrides(&mut spec, args.arch, args.accel);
    let in_file = |e: String| format!("{}: {e}", args.spec.display());
    let stay_paused = spec.stopped;
    spec.stopped = true;
    let assembled = assemble(&spec).map_err(|e| in_file(e.to_string()))?;
    let binary = assembled.qemu_path.clone();
    if probe::check_assembled(&assembled, true)
        .map_err(in_file)?
        .is_none()
    {
        return Err(format!(
            "the QEMU binary {} does not exist (install QEMU, or set hypervisor.hypervisor_path)",
            binary.display()
        ));
    }
    let user_qmp = assembled.paths.dir.join(USER_QMP_SOCKET);
    eprintln!(
        "hvarch: launching {} for `{}` ({} guest, accel={}) in {}",
        binary.display(),
        spec.id,
        assembled.guest_arch,
        assembled
            .config
            .machine
            .accel
            .map_or("default", |a| a.as_str()),
        assembled.paths.dir.display()
    );
    let options = LaunchOptions {
        // Rendered (escaped) by the device model: a `,` in the runtime directory cannot add
        // options.
        monitors: vec![Monitor::qmp(
            USER_QMP_ID,
            MonitorEndpoint::Path(user_qmp.clone()),
        )],
        ..LaunchOptions::default()
    };
    install_signal_handlers()?;
    let started = Instant::now();
    let mut vm = Vm::launch(assembled, options).map_err(|e| e.to_string())?;
    eprintln!(
        "hvarch: QMP ready in {} ms (pid {}); QMP for you: hvarch qmp {}",
        started.elapsed().as_millis(),
        vm.pid(),
        user_qmp.display()
    );
    let console = UnixStream::connect(&vm.paths().console).map_err(|e| {
        format!(
            "cannot connect to the console {}: {e}",
            vm.paths().console.display()
        )
    })?;
    let shutdown_event = vm.qmp().subscribe_filtered(EventFilter::name("SHUTDOWN"));
    if stay_paused {
        eprintln!("hvarch: the spec asks for paused vCPUs: send `cont` over QMP to start them");
    } else {
        vm.resume().map_err(|e| e.to_string())?;
    }
    let stdin_is_tty = std::io::stdin().is_terminal();
    eprintln!(
        "hvarch: console attached (hvc0){}",
        if stdin_is_tty {
            "; Ctrl-C shuts the VM down"
        } else {
            ""
        }
    );
    let raw = if stdin_is_tty {
        RawMode::enable(std::io::stdin().as_raw_fd())
    } else {
        None
    };
    forward_stdin(&console)?;
    let pumped = pump(&mut vm, &console, &shutdown_event);
    drop(raw);
    let grace = Duration::from_secs(args.grace);
    let mut echo = None;
    match pumped {
        Pumped::Signal(signal) => {
            eprintln!(
                "\nhvarch: {} received: asking the guest to power off (system_powerdown; {} s \
                 grace, then quit, then SIGKILL)",
                signal_name(signal),
                args.grace
            );
            // The guest's last words while it powers off; the copy ends when QEMU is gone.
            echo = console.try_clone().ok().and_then(|console| {
                std::thread::Builder::new()
                    .name("console".into())
                    .spawn(move || copy_console(&console))
                    .ok()
            });
        }
        Pumped::Ended => {}
        Pumped::Failed(e) => {
            let _ = vm.shutdown(Duration::from_secs(1));
            return Err(e);
        }
    }
    let outcome = vm.shutdown(grace).map_err(|e| e.to_string())?;
    if let Some(echo) = echo {
        let _ = echo.join();
    }
    report(&outcome, args.grace, &vm.stderr())
}

/// Copies the console to standard output until it closes.
fn copy_console(console: &UnixStream) {
    let mut out = std::io::stdout();
    let mut buf = [0u8; 4096];
    loop {
        match (&*console).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Says how the VM ended; only a guest that powered off is a success.
fn report(outcome: &ShutdownOutcome, grace: u64, stderr: &str) -> Result<(), String> {
    match outcome.ended_by {
        EndedBy::PoweredOff => {
            eprintln!("hvarch: {outcome}");
            Ok(())
        }
        EndedBy::Quit => Err(format!(
            "the guest did not power off within the {grace} s grace period: QEMU was told to \
             quit ({})",
            outcome.status
        )),
        EndedBy::Killed => Err(format!(
            "the guest did not power off within the {grace} s grace period and QEMU did not \
             quit: it was killed ({})",
            outcome.status
        )),
        _ => {
            let stderr = stderr.trim();
            if stderr.is_empty() {
                Err(outcome.to_string())
            } else {
                Err(format!("{outcome}; QEMU said: {stderr}"))
            }
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "Ctrl-C (SIGINT)",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Copies standard input to the console, from a thread of its own (it ends at end of input).
fn forward_stdin(console: &UnixStream) -> Result<(), String> {
    let mut to_guest = console
        .try_clone()
        .map_err(|e| format!("clone the console socket: {e}"))?;
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 4096];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to_guest.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        })
        .map_err(|e| format!("spawn the stdin thread: {e}"))?;
    Ok(())
}

/// Why the console pump stopped.
enum Pumped {
    /// A signal asked us to stop.
    Signal(i32),
    /// QEMU exited, or the guest powered off (`SHUTDOWN` under `-no-shutdown`).
    Ended,
    /// QEMU's state could not be read.
    Failed(String),
}

/// Copies the console to standard output until the guest powers off, QEMU exits, or a
/// signal arrives.
fn pump(vm: &mut Vm, console: &UnixStream, shutdown: &hvarch_qmp::EventSubscription) -> Pumped {
    let mut out = std::io::stdout();
    let mut buf = [0u8; 4096];
    let mut console_open = true;
    loop {
        let signal = SIGNAL.load(Ordering::SeqCst);
        if signal != 0 {
            return Pumped::Signal(signal);
        }
        if console_open {
            let mut fds = libc::pollfd {
                fd: console.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut fds, 1, 100) };
            if ready > 0 {
                match (&*console).read(&mut buf) {
                    Ok(0) => console_open = false,
                    Ok(n) => {
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => console_open = false,
                }
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
        match vm.try_wait() {
            Ok(Some(_)) => {
                drain(console, &mut out);
                return Pumped::Ended;
            }
            Ok(None) => {}
            Err(e) => return Pumped::Failed(e.to_string()),
        }
        if shutdown.try_recv().is_some() {
            drain(console, &mut out);
            return Pumped::Ended;
        }
    }
}

/// Copies what is left on the console (non-blocking) to `out`.
fn drain(console: &UnixStream, out: &mut std::io::Stdout) {
    if console.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = (&*console).read(&mut buf) {
        if n == 0 {
            break;
        }
        let _ = out.write_all(&buf[..n]);
    }
    let _ = out.flush();
}
