//! Where a subcommand's VM spec comes from: a TOML file (errors name the file and the
//! field) or Kata's defaults, then the `--arch` and `--accel` overrides. Every subcommand
//! that takes a spec (`cmdline`, `probe`, `run`) loads it here and nowhere else.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use hvarch::{Accelerator, GuestArch, VmSpec};

/// The options every spec-taking subcommand shares.
#[derive(Debug, Default, clap::Args)]
pub struct SpecOptions {
    /// Guest architecture: aarch64 (arm64), x86_64 (amd64), ppc64le or s390x (overrides the
    /// spec's `arch`; default: the spec's, else the host's).
    #[arg(long, value_parser = parse_arch)]
    pub arch: Option<GuestArch>,
    /// Accelerator (overrides the spec's `hypervisor.accelerator`).
    #[arg(long, value_enum)]
    pub accel: Option<Accel>,
}

/// `--accel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// Linux KVM.
    Kvm,
    /// QEMU's TCG emulation.
    Tcg,
}

fn parse_arch(text: &str) -> Result<GuestArch, String> {
    text.parse()
        .map_err(|e: hvarch::hvarch_arch::guest_arch::UnknownArch| e.to_string())
}

/// A spec, and where it came from (for messages).
#[derive(Debug)]
pub struct Loaded {
    /// The spec, overrides applied.
    pub spec: VmSpec,
    /// The file, or `None` for Kata's default VM.
    pub path: Option<PathBuf>,
}

impl Loaded {
    /// `message`, prefixed with where the spec came from (`vm.toml: …`, `default VM: …`).
    pub fn context(&self, message: impl std::fmt::Display) -> String {
        match &self.path {
            Some(path) => format!("{}: {message}", path.display()),
            None => format!("default VM: {message}"),
        }
    }
}

/// Loads the spec at `path` (Kata's default VM when `None`) and applies `options`.
pub fn load(path: Option<&Path>, options: &SpecOptions) -> Result<Loaded, String> {
    let mut spec = match path {
        Some(path) => read(path)?,
        None => VmSpec::kata_default(),
    };
    if let Some(arch) = options.arch {
        spec.arch = Some(arch);
    }
    if let Some(accel) = options.accel {
        spec.hypervisor.accelerator = match accel {
            Accel::Kvm => Accelerator::Kvm,
            Accel::Tcg => Accelerator::Tcg,
        };
    }
    Ok(Loaded {
        spec,
        path: path.map(Path::to_path_buf),
    })
}

/// Reads and parses `path`. The error names the file; TOML errors also carry the line,
/// column and field (`unknown field `num_vcpu``, `invalid type … for key hypervisor.memory_mb`).
fn read(path: &Path) -> Result<VmSpec, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read spec file: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses spec text.
pub fn parse(text: &str) -> Result<VmSpec, String> {
    toml::from_str(text).map_err(|e| format!("invalid spec: {}", e.to_string().trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_origin() {
        let options = SpecOptions {
            arch: Some(GuestArch::X86_64),
            accel: Some(Accel::Tcg),
        };
        let loaded = load(None, &options).expect("default VM");
        assert_eq!(loaded.spec.arch, Some(GuestArch::X86_64));
        assert_eq!(loaded.spec.hypervisor.accelerator, Accelerator::Tcg);
        assert_eq!(loaded.context("oops"), "default VM: oops");
        let err = load(Some(Path::new("/nonexistent/vm.toml")), &options).expect_err("no file");
        assert!(
            err.starts_with("/nonexistent/vm.toml: cannot read spec file"),
            "{err}"
        );
    }
}
