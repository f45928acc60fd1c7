//! `hvarch cmdline`: print the QEMU command line of a VM.

use std::path::PathBuf;

use clap::ValueEnum;
use hvarch::{assemble, Accelerator, GuestArch, Syntax, VmSpec};

use crate::spec_file;

/// Arguments of `hvarch cmdline`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Guest architecture (overrides the spec's `arch`; default: the spec's, else the host's).
    #[arg(long, value_parser = parse_arch)]
    pub arch: Option<GuestArch>,
    /// Accelerator (overrides the spec's `hypervisor.accelerator`).
    #[arg(long, value_enum)]
    pub accel: Option<Accel>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Shell)]
    pub format: Format,
    /// The VM spec (TOML). Without it, Kata's default VM.
    pub spec: Option<PathBuf>,
}

/// `--accel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// Linux KVM.
    Kvm,
    /// QEMU's TCG emulation.
    Tcg,
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

fn parse_arch(text: &str) -> Result<GuestArch, String> {
    text.parse()
        .map_err(|e: hvarch::hvarch_arch::guest_arch::UnknownArch| e.to_string())
}

/// Runs the subcommand.
pub fn run(args: &Args) -> Result<(), String> {
    let mut spec = match &args.spec {
        Some(path) => spec_file::load(path)?,
        None => VmSpec::kata_default(),
    };
    if let Some(arch) = args.arch {
        spec.arch = Some(arch);
    }
    if let Some(accel) = args.accel {
        spec.hypervisor.accelerator = match accel {
            Accel::Kvm => Accelerator::Kvm,
            Accel::Tcg => Accelerator::Tcg,
        };
    }
    let context = |e: hvarch::Error| match &args.spec {
        Some(path) => format!("{}: {e}", path.display()),
        None => format!("default VM: {e}"),
    };
    let vm = assemble(&spec).map_err(context)?;
    let argv = vm.argv(Syntax::Options).map_err(context)?;
    println!("{}", render(&argv, args.format));
    Ok(())
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
