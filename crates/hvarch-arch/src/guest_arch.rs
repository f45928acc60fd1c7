//! The guest architecture: a run-time value, so every backend builds and is tested on every
//! host (a QEMU command line depends on the guest machine, not on the host).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A guest CPU architecture hvarch knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum GuestArch {
    /// 64-bit Arm (`qemu-system-aarch64`, machine `virt`).
    Aarch64,
    /// x86-64 (`qemu-system-x86_64`, machines `pc`, `q35`, `microvm`).
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit little-endian POWER (`qemu-system-ppc64`, machine `pseries`); no backend yet.
    Ppc64le,
    /// IBM Z (`qemu-system-s390x`, machine `s390-ccw-virtio`); no backend yet.
    S390x,
}

impl GuestArch {
    /// Every architecture.
    pub const ALL: [GuestArch; 4] = [
        GuestArch::Aarch64,
        GuestArch::X86_64,
        GuestArch::Ppc64le,
        GuestArch::S390x,
    ];

    /// The name used on the command line and in spec files (`aarch64`, `x86_64`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            GuestArch::Aarch64 => "aarch64",
            GuestArch::X86_64 => "x86_64",
            GuestArch::Ppc64le => "ppc64le",
            GuestArch::S390x => "s390x",
        }
    }

    /// The QEMU system emulator's binary name.
    pub fn qemu_binary(self) -> &'static str {
        match self {
            GuestArch::Aarch64 => "qemu-system-aarch64",
            GuestArch::X86_64 => "qemu-system-x86_64",
            GuestArch::Ppc64le => "qemu-system-ppc64",
            GuestArch::S390x => "qemu-system-s390x",
        }
    }

    /// The Rust `target_arch` of this architecture (what a host of this kind compiles for).
    pub fn target_arch(self) -> &'static str {
        match self {
            GuestArch::Aarch64 => "aarch64",
            GuestArch::X86_64 => "x86_64",
            GuestArch::Ppc64le => "powerpc64",
            GuestArch::S390x => "s390x",
        }
    }
}

impl fmt::Display for GuestArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An architecture name hvarch does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown guest architecture {0:?} (known: aarch64, x86_64, ppc64le, s390x)")]
pub struct UnknownArch(pub String);

impl FromStr for GuestArch {
    type Err = UnknownArch;

    /// Accepts the canonical names and the common aliases `arm64`, `amd64`, `x86-64`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "aarch64" | "arm64" => GuestArch::Aarch64,
            "x86_64" | "amd64" | "x86-64" => GuestArch::X86_64,
            "ppc64le" | "ppc64" => GuestArch::Ppc64le,
            "s390x" => GuestArch::S390x,
            other => return Err(UnknownArch(other.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in GuestArch::ALL {
            assert_eq!(arch.as_str().parse::<GuestArch>().unwrap(), arch);
            let json = serde_json::to_string(&arch).unwrap();
            assert_eq!(json, format!("\"{arch}\""));
            assert_eq!(serde_json::from_str::<GuestArch>(&json).unwrap(), arch);
        }
        assert_eq!("arm64".parse::<GuestArch>().unwrap(), GuestArch::Aarch64);
        assert!("riscv64"
            .parse::<GuestArch>()
            .unwrap_err()
            .to_string()
            .contains("riscv64"));
    }
}
