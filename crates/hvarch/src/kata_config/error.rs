//! What reading a Kata configuration can refuse ([`KataError`]) or report ([`KataWarning`]).
//!
//! Keys are named in full, table included (`hypervisor.qemu.default_vcpus`), with the line of
//! the file they are on.

use std::fmt;
use std::path::PathBuf;

/// Why a Kata configuration file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KataError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or its tables are not tables.
    #[error("not a Kata configuration: {message}")]
    Syntax {
        /// The TOML parser's message (with the line and column).
        message: String,
    },
    /// The file has no `[hypervisor.qemu]` table.
    #[error(
        "no [hypervisor.qemu] table{}: hvarch builds QEMU VMs",
        found_suffix(.found)
    )]
    NoQemuTable {
        /// The hypervisor tables the file has (`clh`, `firecracker`, …).
        found: Vec<String>,
    },
    /// A key's value has the wrong type.
    #[error("line {line}: `{key}` must be {expected}, not {found}")]
    Type {
        /// The key.
        key: String,
        /// Its line.
        line: usize,
        /// The type Kata decodes it as.
        expected: &'static str,
        /// What the file has.
        found: String,
    },
    /// A key Kata does not have (not in `lenient` mode).
    #[error(
        "line {line}: unknown key `{key}`{}",
        match .suggestion { Some(s) => format!(" (did you mean `{s}`?)"), None => String::new() }
    )]
    UnknownKey {
        /// The key.
        key: String,
        /// Its line.
        line: usize,
        /// The known key it is closest to, if it looks like a typo.
        suggestion: Option<&'static str>,
    },
    /// A key has a value Kata (or hvarch) refuses.
    #[error("{}`{key}` = {value}: {reason}", line_prefix(*.line))]
    Invalid {
        /// The key.
        key: String,
        /// Its line (`None` when the value is a default).
        line: Option<usize>,
        /// The value, as text.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A setting hvarch cannot build at all, and must not quietly drop (a confidential
    /// guest would silently become an ordinary one).
    #[error("{}`{key}`: {reason}", line_prefix(*.line))]
    Unsupported {
        /// The key.
        key: String,
        /// Its line.
        line: Option<usize>,
        /// What hvarch lacks.
        reason: &'static str,
    },
    /// Looking up the guest architecture's backend failed.
    #[error(transparent)]
    Vm(#[from] crate::Error),
}

fn found_suffix(found: &[String]) -> String {
    if found.is_empty() {
        String::new()
    } else {
        format!(" (the file configures: {})", found.join(", "))
    }
}

fn line_prefix(line: Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

/// Something in the file hvarch accepted but did not do as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KataWarning {
    /// The key, table included (`hypervisor.qemu.enable_virtio_mem`).
    pub key: String,
    /// Its line, when the file sets it.
    pub line: Option<usize>,
    /// What happened.
    pub kind: WarningKind,
}

/// What a [`KataWarning`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WarningKind {
    /// hvarch knows the key but builds the VM without it.
    NotHonoured {
        /// Why.
        reason: &'static str,
    },
    /// The value was changed the way Kata changes it.
    Adjusted {
        /// The value used instead, and why.
        reason: String,
    },
    /// A key Kata does not have, skipped because the `lenient` option is set.
    UnknownKey {
        /// The known key it is closest to, if it looks like a typo.
        suggestion: Option<&'static str>,
    },
}

impl fmt::Display for KataWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&line_prefix(self.line))?;
        match &self.kind {
            WarningKind::NotHonoured { reason } => {
                write!(f, "`{}` is not honoured: {reason}", self.key)
            }
            WarningKind::Adjusted { reason } => write!(f, "`{}`: {reason}", self.key),
            WarningKind::UnknownKey { suggestion } => {
                write!(f, "unknown key `{}` ignored", self.key)?;
                if let Some(s) = suggestion {
                    write!(f, " (did you mean `{s}`?)")?;
                }
                Ok(())
            }
        }
    }
}
