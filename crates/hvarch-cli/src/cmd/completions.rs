//! `hvarch completions SHELL`: a completion script for bash, zsh, fish (or elvish,
//! PowerShell), generated from the same definitions as `--help`.
//!
//! ```text
//! hvarch completions bash > /etc/bash_completion.d/hvarch
//! hvarch completions zsh > "${fpath[1]}/_hvarch"
//! hvarch completions fish > ~/.config/fish/completions/hvarch.fish
//! ```

use clap_complete::Shell;

use crate::output::{CliResult, Output};

/// Arguments of `hvarch completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Prints the script for `command` (the whole `hvarch` command tree).
pub fn run(args: &Args, command: &mut clap::Command) -> CliResult {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, command, "hvarch", &mut script);
    Output::stdout().bytes(&script)
}
