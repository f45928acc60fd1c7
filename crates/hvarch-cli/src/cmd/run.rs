//! `hvarch run`: launch the VM of a spec and attach its console (hvc0) to the terminal.
//!
//! The VM starts with its vCPUs paused, the console socket is connected, and only then the
//! vCPUs run, so no early output is lost. Standard input goes to the guest, the guest's
//! console to standard output; when standard input is a terminal it is put in raw mode
//! (signals kept: Ctrl-C still interrupts) and restored on exit. Progress lines go to stderr.
//!
//! - The guest powers off (QEMU exits, or reports `SHUTDOWN` under `-no-shutdown`): exit 0.
//! - Ctrl-C (SIGINT) or SIGTERM: `system_powerdown`, up to `--grace` seconds for the guest,
//!   then `quit`, then SIGKILL ([`hvarch::Vm::shutdown`]); exit 0 once QEMU is gone.
//! - QEMU dies on its own with a failure: exit 1 with its stderr.
//!
//! While it runs, a second QMP monitor is open for people and scripts:
//! `hvarch qmp <runtime_dir>/qmp-user.sock` (the first one is the library's).

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use hvarch::{assemble, GuestArch, LaunchOptions, Vm};
use hvarch_qmp::EventFilter;

use crate::cmd::cmdline::{apply_overrides, parse_arch, Accel};
use crate::cmd::probe;
use crate::spec_file;

/// The extra QMP socket `hvarch run` opens in the runtime directory.
pub const USER_QMP_SOCKET: &str = "qmp-user.sock";

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
    /// Seconds the guest gets to power off after Ctrl-C before QEMU is told to quit.
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
        extra_args: vec![
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", user_qmp.display()),
        ],
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
    let outcome = pump(&mut vm, &console, &shutdown_event);
    drop(raw);
    match outcome {
        Outcome::Signal(signal) => {
            eprintln!(
                "\nhvarch: {} received: shutting the VM down (system_powerdown, {} s grace, then quit)",
                if signal == libc::SIGINT { "Ctrl-C" } else { "signal" },
                args.grace
            );
            let status = vm
                .shutdown(Duration::from_secs(args.grace))
                .map_err(|e| e.to_string())?;
            eprintln!("hvarch: QEMU exited ({status})");
            Ok(())
        }
        Outcome::PoweredOff => {
            let status = vm
                .shutdown(Duration::from_secs(1))
                .map_err(|e| e.to_string())?;
            eprintln!("hvarch: the guest powered off; QEMU exited ({status})");
            if status.success() {
                Ok(())
            } else {
                Err(format!("QEMU exited with {status}: {}", vm.stderr().trim()))
            }
        }
        Outcome::Exited(status) if status.success() => {
            eprintln!("hvarch: the guest powered off; QEMU exited ({status})");
            Ok(())
        }
        Outcome::Exited(status) => {
            Err(format!("QEMU exited with {status}: {}", vm.stderr().trim()))
        }
        Outcome::Failed(e) => {
            let _ = vm.shutdown(Duration::from_secs(1));
            Err(e)
        }
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

enum Outcome {
    Signal(i32),
    PoweredOff,
    Exited(std::process::ExitStatus),
    Failed(String),
}

/// Copies the console to standard output until the guest powers off, QEMU exits, or a
/// signal arrives.
fn pump(vm: &mut Vm, console: &UnixStream, shutdown: &hvarch_qmp::EventSubscription) -> Outcome {
    let mut out = std::io::stdout();
    let mut buf = [0u8; 4096];
    let mut console_open = true;
    loop {
        let signal = SIGNAL.load(Ordering::SeqCst);
        if signal != 0 {
            return Outcome::Signal(signal);
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
            Ok(Some(status)) => {
                drain(console, &mut out);
                return Outcome::Exited(status);
            }
            Ok(None) => {}
            Err(e) => return Outcome::Failed(e.to_string()),
        }
        if shutdown.try_recv().is_some() {
            drain(console, &mut out);
            return Outcome::PoweredOff;
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
