//! `hvarch cmdline`: print the QEMU command line of a VM.

use std::path::PathBuf;

use clap::ValueEnum;
use hvarch::{assemble, Accelerator, GuestArch, Syntax, VmSpec};

use crate::cmd::probe;
use crate::spec_file;

/// Arguments of `hvarch cmdline`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Guest architecture: aarch64 (arm64), x86_64 (amd64), ppc64le or s390x (overrides the
    /// spec's `arch`; default: the spec's, else the host's).
    #[arg(long, value_parser = parse_arch)]
    pub arch: Option<GuestArch>,
    /// Accelerator (overrides the spec's `hypervisor.accelerator`).
    #[arg(long, value_enum)]
    pub accel: Option<Accel>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Shell)]
    pub format: Format,
    /// Do not ask the QEMU binary whether it has the spec's machine and devices.
    #[arg(long)]
    pub no_check: bool,
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

pub fn parse_arch(text: &str) -> Result<GuestArch, String> {
    text.parse()
        .map_err(|e: hvarch::hvarch_arch::guest_arch::UnknownArch| e.to_string())
}

/// Runs the subcommand.
pub fn run(args: &Args) -> Result<(), String> {
    let mut spec = match &args.spec {
        Some(path) => spec_file::load(path)?,
        None => VmSpec::kata_default(),
    };
    apply_overrides(&mut spec, args.arch, args.accel);
    let context = |e: hvarch::Error| match &args.spec {
        Some(path) => format!("{}: {e}", path.display()),
        None => format!("default VM: {e}"),
    };
    let vm = assemble(&spec).map_err(context)?;
    let argv = vm.argv(Syntax::Options).map_err(context)?;
    if !args.no_check {
        // The binary is asked for the machine and devices, not the accelerator: a KVM
        // command line may be printed on a host (or for a guest arch) without KVM.
        let checked = probe::check_assembled(&vm, false).map_err(|e| match &args.spec {
            Some(path) => format!("{}: {e}", path.display()),
            None => format!("default VM: {e}"),
        })?;
        if checked.is_none() {
            eprintln!(
                "hvarch: note: {} not found; machine and devices not checked",
                vm.qemu_path.display()
            );
        }
    }
    println!("{}", render(&argv, args.format));
    Ok(())
}

/// Applies `--arch` and `--accel` to `spec`.
pub fn apply_overrides(spec: &mut VmSpec, arch: Option<GuestArch>, accel: Option<Accel>) {
    if let Some(arch) = arch {
        spec.arch = Some(arch);
    }
    if let Some(accel) = accel {
        spec.hypervisor.accelerator = match accel {
            Accel::Kvm => Accelerator::Kvm,
            Accel::Tcg => Accelerator::Tcg,
        };
    }
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
