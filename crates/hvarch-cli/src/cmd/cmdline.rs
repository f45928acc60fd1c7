//! `hvarch cmdline`: print the QEMU command line of a VM.

use std::path::PathBuf;

use clap::ValueEnum;
use hvarch::probe::{self, ProbeError};
use hvarch::{assemble, Syntax};

use crate::output::{CliResult, Output};
use crate::spec_file::{self, SpecOptions};

/// Arguments of `hvarch cmdline`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub options: SpecOptions,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Shell)]
    pub format: Format,
    /// Do not ask the QEMU binary whether it has the spec's machine and devices.
    #[arg(long)]
    pub no_check: bool,
    /// The VM spec (TOML). Without it, Kata's default VM.
    pub spec: Option<PathBuf>,
}

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One line a POSIX shell can run, arguments single-quoted where needed.
    Shell,
    /// One argument per line.
    Lines,
    /// A JSON array of strings.
    Json,
}

/// Runs the subcommand.
pub fn run(args: &Args) -> CliResult {
    let loaded = spec_file::load(args.spec.as_deref(), &args.options)?;
    loaded.print_warnings();
    let vm = assemble(&loaded.spec).map_err(|e| loaded.context(e))?;
    let argv = vm.argv(Syntax::Options).map_err(|e| loaded.context(e))?;
    if !args.no_check {
        // The binary is asked for the machine and devices, not the accelerator: a KVM
        // command line may be printed on a host (or for a guest arch) without KVM.
        match probe::check_without_accelerator(&vm) {
            Ok(_) => {}
            Err(ProbeError::NotFound { binary }) => eprintln!(
                "hvarch: note: {} not found; machine and devices not checked",
                binary.display()
            ),
            Err(e) => return Err(loaded.context(e).into()),
        }
    }
    Output::stdout().line(render(&argv, args.format))
}

/// The argv in `format` (without a trailing newline).
pub fn render(argv: &[String], format: Format) -> String {
    match format {
        Format::Shell => argv
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
        Format::Lines => argv.join("\n"),
        Format::Json => serde_json::to_string(argv).unwrap_or_default(),
    }
}

/// Quotes `arg` for a POSIX shell: as is when it holds only safe characters, else in single
/// quotes, with each `'` written as `'\''`.
pub fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("-machine"), "-machine");
        assert_eq!(shell_quote("virt,accel=tcg"), "virt,accel=tcg");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("a\"b"), "'a\"b'");
    }

    #[test]
    fn formats() {
        let argv = vec!["qemu".to_owned(), "-append".to_owned(), "a b".to_owned()];
        assert_eq!(render(&argv, Format::Shell), "qemu -append 'a b'");
        assert_eq!(render(&argv, Format::Lines), "qemu\n-append\na b");
        assert_eq!(render(&argv, Format::Json), r#"["qemu","-append","a b"]"#);
    }
}
