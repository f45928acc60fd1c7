//! `hvarch`: Kata-style QEMU VMs for any guest architecture, from the command line.
//!
//! ```text
//! hvarch cmdline [--arch aarch64|x86_64] [--accel kvm|tcg] [--format shell|lines|json] [SPEC.toml]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cmdline(args) => cmd::cmdline::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hvarch: {message}");
            ExitCode::FAILURE
        }
    }
}
