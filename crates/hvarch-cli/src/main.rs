//! `hvarch`: Kata-style QEMU VMs for any guest architecture, from the command line.
//!
//! ```text
//! hvarch [-v|-vv] cmdline [--arch aarch64|x86_64|ppc64le|s390x] [--accel kvm|tcg] [--format shell|lines|json] [--no-check] [SPEC.toml | --kata-config FILE [--lenient]]
//! hvarch [-v|-vv] run [--arch …] [--accel …] [--grace SECS] (SPEC.toml | --kata-config FILE [--lenient])
//! hvarch [-v|-vv] qmp [--timeout SECS] SOCKET [COMMAND [JSON-ARGS]]
//! hvarch [-v|-vv] probe [--arch …] [--accel …] [--all-machines] [--format text|json] [SPEC.toml | --kata-config FILE [--lenient]]
//! hvarch completions bash|zsh|fish
//! ```
//!
//! One module per subcommand under `cmd/`; each has an `Args` (clap) and a `run`. Exit
//! status: 0 on success, 1 on failure (the message on stderr as `hvarch: <message>`), 141
//! when standard output is closed by its reader (see [`output`]). Logging: [`logging`].

mod cmd;
mod line_editor;
mod logging;
mod output;
mod spec_file;
mod terminal;

use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, Parser, Subcommand};

use crate::output::{CliError, OUTPUT_CLOSED_STATUS};

/// Kata-style QEMU VMs for any guest architecture.
#[derive(Debug, Parser)]
#[command(name = "hvarch", version, about, propagate_version = true)]
struct Cli {
    /// Show what hvarch does on stderr: -v its progress, -vv the details (QEMU's command
    /// line, the probe), -vvv everything. RUST_LOG, when set, decides instead.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
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
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions(cmd::completions::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    let result = match cli.command {
        Command::Cmdline(args) => cmd::cmdline::run(&args),
        Command::Run(args) => cmd::run::run(&args),
        Command::Qmp(args) => cmd::qmp::run(&args),
        Command::Probe(args) => cmd::probe::run(&args),
        Command::Completions(args) => cmd::completions::run(&args, &mut Cli::command()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::OutputClosed) => ExitCode::from(OUTPUT_CLOSED_STATUS),
        Err(CliError::Failed(message)) => {
            eprintln!("hvarch: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn verbosity_is_global() {
        let cli = Cli::try_parse_from(["hvarch", "probe", "-vv"]).expect("parses");
        assert_eq!(cli.verbose, 2);
        let cli = Cli::try_parse_from(["hvarch", "-v", "cmdline"]).expect("parses");
        assert_eq!(cli.verbose, 1);
    }
}
