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
//! - Standard output is closed by its reader (`hvarch run vm.toml | head`): the guest is asked
//!   to power off as for a signal, and `hvarch run` exits 141 (see [`crate::output`]).
//!
//! With Kata's default `enable_swap = false`, QEMU runs with `-overcommit mem-lock=on` and
//! locks all guest memory (and under TCG its translation cache) into RAM before QMP is ready:
//! seconds for 512 MiB under TCG. When QMP is not ready after a second, `hvarch run` says so
//! on stderr, with `enable_swap = true` as the way to skip it, and waits up to a minute for
//! the start instead of the QMP client's default 10 s.
//!
//! While it runs, a second QMP monitor is open for people and scripts:
//! `hvarch qmp <runtime_dir>/qmp-user.sock` (the first one is the library's).

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hvarch::hvarch_devices::config::{Monitor, MonitorEndpoint};
use hvarch::probe::{self, ProbeError};
use hvarch::{assemble, Assembled, EndedBy, LaunchOptions, ShutdownOutcome, Vm};
use hvarch_qmp::EventFilter;

use crate::output::{CliError, CliResult, Output};
use crate::spec_file::{self, SpecOptions};
use crate::terminal::{Raw, RawMode};

/// The extra QMP socket `hvarch run` opens in the runtime directory.
pub const USER_QMP_SOCKET: &str = "qmp-user.sock";
/// The chardev id of that monitor.
pub const USER_QMP_ID: &str = "qmp-user";

/// Arguments of `hvarch run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub options: SpecOptions,
    /// Seconds the guest gets to power off after Ctrl-C (or SIGTERM, SIGHUP) before QEMU is
    /// told to quit. Any number is accepted; one too large to count to means no limit.
    #[arg(long, default_value_t = 10)]
    pub grace: u64,
    /// The VM spec (TOML); not with `--kata-config`.
    #[arg(required_unless_present = "kata_config")]
    pub spec: Option<PathBuf>,
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

/// How long QEMU may take to get ready before `hvarch run` says why (when it knows).
const SLOW_LAUNCH_AFTER: Duration = Duration::from_secs(1);
/// Overrides [`SLOW_LAUNCH_AFTER`] in milliseconds (for tests, which cannot rely on QEMU
/// being slow).
const SLOW_LAUNCH_AFTER_ENV: &str = "HVARCH_SLOW_LAUNCH_NOTE_MS";

/// How long QEMU may take to get ready when it locks the guest's memory first (seconds
/// under TCG, more on a loaded host), instead of the QMP client's default.
const MEM_LOCK_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the subcommand.
pub fn run(args: &Args) -> CliResult {
    let loaded = spec_file::load(args.spec.as_deref(), &args.options)?;
    loaded.print_warnings();
    let in_file = |e: &dyn std::fmt::Display| CliError::Failed(loaded.context(e));
    let mut spec = loaded.spec.clone();
    let stay_paused = spec.stopped;
    spec.stopped = true;
    let assembled = assemble(&spec).map_err(|e| in_file(&e))?;
    let binary = assembled.qemu_path.clone();
    match probe::check(&assembled) {
        Ok(_) => {}
        Err(ProbeError::NotFound { binary }) => {
            return Err(format!(
                "the QEMU binary {} does not exist (install QEMU, or set \
                 hypervisor.hypervisor_path)",
                binary.display()
            )
            .into())
        }
        Err(e) => return Err(in_file(&e)),
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
    let mut options = LaunchOptions {
        // Rendered (escaped) by the device model: a `,` in the runtime directory cannot add
        // options.
        monitors: std::iter::once(Monitor::qmp(
            USER_QMP_ID,
            MonitorEndpoint::Path(user_qmp.clone()),
        ))
        .chain(loaded.monitors.iter().cloned())
        .collect(),
        ..LaunchOptions::default()
    };
    if locks_memory(&assembled) {
        options.qmp.greeting_timeout = options.qmp.greeting_timeout.max(MEM_LOCK_START_TIMEOUT);
    }
    install_signal_handlers()?;
    let started = Instant::now();
    let note = SlowLaunchNote::start(&assembled);
    let launched = Vm::launch(assembled, options);
    drop(note);
    let mut vm = launched.map_err(|e| e.to_string())?;
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
        RawMode::enable(std::io::stdin().as_raw_fd(), Raw::Console)
    } else {
        None
    };
    forward_stdin(&console)?;
    let pumped = pump(&mut vm, &console, &shutdown_event);
    drop(raw);
    let grace = Duration::from_secs(args.grace);
    let mut echo = None;
    let mut output_closed = false;
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
        Pumped::OutputClosed => {
            output_closed = true;
            eprintln!(
                "hvarch: standard output closed: asking the guest to power off \
                 (system_powerdown; {} s grace, then quit, then SIGKILL)",
                args.grace
            );
        }
        Pumped::Ended => {}
        Pumped::Failed(e) => {
            let _ = vm.shutdown(Duration::from_secs(1));
            return Err(e.into());
        }
    }
    let outcome = vm.shutdown(grace).map_err(|e| e.to_string())?;
    if let Some(echo) = echo {
        let _ = echo.join();
    }
    let reported = report(&outcome, args.grace, &vm.stderr());
    if output_closed {
        // Like a tool killed by SIGPIPE: the reason to stop was the closed output, whatever
        // the guest then did (said above, or in the message below).
        if let Err(message) = reported {
            eprintln!("hvarch: {message}");
        }
        return Err(CliError::OutputClosed);
    }
    reported.map_err(CliError::Failed)
}

/// While QEMU starts, says on stderr what makes it slow when it knows: with
/// `-overcommit mem-lock=on` (Kata's default, `enable_swap = false`) QEMU locks all guest
/// memory (and, under TCG, its translation cache) into RAM before QMP is ready, which takes
/// seconds. Says nothing when QEMU is ready within [`SLOW_LAUNCH_AFTER`].
struct SlowLaunchNote {
    /// Dropped when QEMU is ready (or failed to start): the note is no longer due.
    ready: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowLaunchNote {
    fn start(assembled: &Assembled) -> SlowLaunchNote {
        let mut note = SlowLaunchNote {
            ready: None,
            thread: None,
        };
        let Some(text) = mem_lock_note(assembled) else {
            return note;
        };
        let after = std::env::var(SLOW_LAUNCH_AFTER_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(SLOW_LAUNCH_AFTER, Duration::from_millis);
        let (ready, launched) = mpsc::channel::<()>();
        note.ready = Some(ready);
        note.thread = std::thread::Builder::new()
            .name("launch-note".into())
            .spawn(move || {
                if launched.recv_timeout(after) == Err(mpsc::RecvTimeoutError::Timeout) {
                    eprintln!("hvarch: {text}");
                }
            })
            .ok();
        note
    }
}

impl Drop for SlowLaunchNote {
    fn drop(&mut self) {
        drop(self.ready.take());
        // Joined, so that a note due at this very moment is printed before what follows.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether QEMU locks the VM's memory before it starts (`-overcommit mem-lock=on`).
fn locks_memory(assembled: &Assembled) -> bool {
    assembled.config.knobs.mem_lock == Some(true)
}

/// The note for a VM whose memory QEMU locks, `None` for one it does not.
fn mem_lock_note(assembled: &Assembled) -> Option<String> {
    if !locks_memory(assembled) {
        return None;
    }
    let mib = assembled.config.memory.as_ref().map_or(0, |m| m.size >> 20);
    Some(format!(
        "QEMU is locking all {mib} MiB of guest memory{} into RAM before it starts \
         (-overcommit mem-lock=on, from Kata's default `enable_swap = false`); this can take \
         seconds. Set `enable_swap = true` under [hypervisor] in the spec to skip it.",
        if assembled.config.machine.accel == Some(hvarch::Accelerator::Tcg) {
            " and its TCG translation cache"
        } else {
            ""
        }
    ))
}

/// Copies the console to standard output until either closes.
fn copy_console(console: &UnixStream) {
    let mut out = Output::stdout();
    let mut buf = [0u8; 4096];
    loop {
        match (&*console).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if out.bytes(&buf[..n]).is_err() {
                    break;
                }
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
    /// Standard output was closed by its reader.
    OutputClosed,
    /// QEMU exited, or the guest powered off (`SHUTDOWN` under `-no-shutdown`).
    Ended,
    /// QEMU's state could not be read, or standard output could not be written.
    Failed(String),
}

/// Copies the console to standard output until the guest powers off, QEMU exits, a signal
/// arrives, or standard output is closed (noticed at once, without waiting for the guest
/// to write: a pipe's write end polls `POLLERR` when its reader is gone).
fn pump(vm: &mut Vm, console: &UnixStream, shutdown: &hvarch_qmp::EventSubscription) -> Pumped {
    let mut out = Output::stdout();
    let stdout = std::io::stdout().as_raw_fd();
    let mut buf = [0u8; 4096];
    let mut console_open = true;
    loop {
        let signal = SIGNAL.load(Ordering::SeqCst);
        if signal != 0 {
            return Pumped::Signal(signal);
        }
        let mut fds = [
            libc::pollfd {
                fd: stdout,
                events: 0,
                revents: 0,
            },
            libc::pollfd {
                fd: console.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let watched: libc::nfds_t = if console_open { 2 } else { 1 };
        // SAFETY: `watched` valid pollfds for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), watched, 100) };
        if ready > 0 && fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            return Pumped::OutputClosed;
        }
        if ready > 0 && fds[1].revents != 0 {
            match (&*console).read(&mut buf) {
                Ok(0) => console_open = false,
                Ok(n) => match out.bytes(&buf[..n]) {
                    Ok(()) => {}
                    Err(CliError::OutputClosed) => return Pumped::OutputClosed,
                    Err(e) => return Pumped::Failed(e.to_string()),
                },
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => console_open = false,
            }
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

/// Copies what is left on the console (non-blocking) to `out`, if it is still open.
fn drain(console: &UnixStream, out: &mut Output) {
    if console.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = (&*console).read(&mut buf) {
        if n == 0 || out.bytes(&buf[..n]).is_err() {
            break;
        }
    }
}
