//! Where a subcommand's VM spec comes from: a TOML file (errors name the file and the
//! field), a Kata `configuration.toml` (`--kata-config`, read by [`hvarch::kata_config`]) or
//! Kata's defaults, then the `--arch` and `--accel` overrides. Every subcommand that takes a
//! spec (`cmdline`, `probe`, `run`) loads it here and nowhere else.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use hvarch::hvarch_devices::config::Monitor;
use hvarch::kata_config::{self, KataOptions, KataWarning};
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
    /// A Kata configuration file (`configuration.toml`) to read in place of a spec: its
    /// `[hypervisor.qemu]` table becomes the VM Kata would build. What hvarch does not honour
    /// is reported on stderr as a warning.
    #[arg(long, value_name = "FILE", conflicts_with = "spec")]
    pub kata_config: Option<PathBuf>,
    /// With `--kata-config`: an unknown key under `[hypervisor.qemu]` is a warning instead of
    /// an error.
    #[arg(long, requires = "kata_config")]
    pub lenient: bool,
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
    /// What a Kata configuration file asked for that hvarch does not do as written.
    pub warnings: Vec<KataWarning>,
    /// Monitors the file asks for besides hvarch's own (Kata's `extra_monitor_socket`),
    /// in the spec's runtime directory.
    pub monitors: Vec<Monitor>,
}

impl Loaded {
    /// `message`, prefixed with where the spec came from (`vm.toml: …`, `default VM: …`).
    pub fn context(&self, message: impl std::fmt::Display) -> String {
        match &self.path {
            Some(path) => format!("{}: {message}", path.display()),
            None => format!("default VM: {message}"),
        }
    }

    /// Prints the warnings to stderr, each naming the file.
    pub fn print_warnings(&self) {
        for warning in &self.warnings {
            eprintln!("hvarch: warning: {}", self.context(warning));
        }
    }
}

/// Loads the spec: the Kata configuration of `options.kata_config`, else the spec file at
/// `path`, else Kata's default VM; then applies the overrides of `options`.
pub fn load(path: Option<&Path>, options: &SpecOptions) -> Result<Loaded, String> {
    let mut loaded = match (&options.kata_config, path) {
        (Some(kata), _) => read_kata(kata, options)?,
        (None, path) => Loaded {
            spec: path.map_or_else(|| Ok(VmSpec::kata_default()), read)?,
            path: path.map(Path::to_path_buf),
            warnings: Vec::new(),
            monitors: Vec::new(),
        },
    };
    if let Some(arch) = options.arch {
        loaded.spec.arch = Some(arch);
    }
    if let Some(accel) = options.accel {
        loaded.spec.hypervisor.accelerator = match accel {
            Accel::Kvm => Accelerator::Kvm,
            Accel::Tcg => Accelerator::Tcg,
        };
    }
    Ok(loaded)
}

/// Reads the Kata configuration file at `path` (`--arch` also picks the backend whose
/// defaults apply; otherwise the file's machine type says).
fn read_kata(path: &Path, options: &SpecOptions) -> Result<Loaded, String> {
    let kata_options = KataOptions {
        arch: options.arch,
        lenient: options.lenient,
        ..KataOptions::default()
    };
    let kata = kata_config::from_file(path, &kata_options)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let monitors = kata.extra_monitors(&kata.spec.runtime_dir());
    Ok(Loaded {
        spec: kata.spec,
        path: Some(path.to_path_buf()),
        warnings: kata.warnings,
        monitors,
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
            ..SpecOptions::default()
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

    fn kata_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hvarch-cli-kata-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write the Kata file");
        path
    }

    #[test]
    fn a_kata_configuration_in_place_of_a_spec() {
        let path = kata_file(
            "configuration.toml",
            "[hypervisor.qemu]\nmachine_type = \"virt\"\ninitrd = \"/i\"\nshared_fs = \"none\"\ndefault_vcpus = 2\n\
             default_memory = 1024\nenable_debug = true\nextra_monitor_socket = \"qmp\"\n\
             [runtime]\nenable_debug = true\n",
        );
        let options = SpecOptions {
            accel: Some(Accel::Tcg),
            kata_config: Some(path.clone()),
            ..SpecOptions::default()
        };
        let loaded = load(None, &options).expect("Kata file");
        assert_eq!(loaded.spec.guest_arch().unwrap(), GuestArch::Aarch64);
        assert_eq!(loaded.spec.hypervisor.num_vcpus, 2);
        assert_eq!(loaded.spec.hypervisor.memory_mb, 1024);
        assert_eq!(loaded.spec.hypervisor.accelerator, Accelerator::Tcg);
        assert_eq!(loaded.monitors.len(), 1, "Kata's extra monitor");
        assert!(loaded.context("x").starts_with(&path.display().to_string()));
        std::fs::remove_file(&path).expect("remove");
    }

    #[test]
    fn an_unknown_kata_key_is_an_error_unless_lenient() {
        let path = kata_file(
            "typo.toml",
            "[hypervisor.qemu]\nmachine_type = \"q35\"\ninitrd = \"/i\"\nshared_fs = \"none\"\ndefault_vcpu = 2\n",
        );
        let mut options = SpecOptions {
            kata_config: Some(path.clone()),
            ..SpecOptions::default()
        };
        let err = load(None, &options).expect_err("unknown key");
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains("default_vcpu"), "{err}");
        options.lenient = true;
        let loaded = load(None, &options).expect("lenient");
        assert_eq!(loaded.spec.guest_arch().unwrap(), GuestArch::X86_64);
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.to_string().contains("default_vcpu")),
            "{:?}",
            loaded.warnings
        );
        std::fs::remove_file(&path).expect("remove");
    }
}
