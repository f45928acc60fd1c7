//! `hvarch`: Kata-style QEMU VMs for any guest architecture, from the command line.
//!
//! ```text
//! hvarch cmdline [--arch aarch64|x86_64|ppc64le|s390x] [--accel kvm|tcg] [--format shell|lines|json] [--no-check] [SPEC.toml]
//! hvarch run [--arch …] [--accel …] [--grace SECS] SPEC.toml
//! hvarch qmp [--timeout SECS] SOCKET [COMMAND [JSON-ARGS]]
//! hvarch probe [--arch …] [--accel …] [--all-machines] [SPEC.toml]
//! ```
//!
//! One module per subcommand under `cmd/`; each has an `Args` (clap) and a `run` returning
//! the process exit code. Errors go to stderr as `hvarch: <message>`.

mod cmd;
mod spec_file;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kata-style QEMU VMs for any guest architecture.
#[derive(Debug, Parser)]
#[command(name = "hvarch", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the QEMU command line (binary first) for the VM in SPEC, or for the built-in
    /// default VM (Kata's defaults, initrd boot) when no SPEC is given.
    Cmdline(cmd::cmdline::Args),
    /// Launch the VM of SPEC and attach its console (hvc0) to the terminal; Ctrl-C shuts it
    /// down. Exits 0 when the guest powers off.
    Run(cmd::run::Args),
    /// Send one QMP command to SOCKET and print the reply, or, without COMMAND, open an
    /// interactive QMP shell (history, Tab completion, events as they arrive).
    Qmp(cmd::qmp::Args),
    /// Show the host's and the QEMU binary's capabilities (version, accelerators, machine
    /// types) and, given a SPEC, whether the binary has everything it needs.
    Probe(cmd::probe::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cmdline(args) => cmd::cmdline::run(&args),
        Command::Run(args) => cmd::run::run(&args),
        Command::Qmp(args) => cmd::qmp::run(&args),
        Command::Probe(args) => cmd::probe::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hvarch: {message}");
            ExitCode::FAILURE
        }
    }
}
