//! QEMU versions, as reported by the QMP greeting or `query-version`.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::error::Error;

/// A QEMU version `major.minor.micro`, ordered numerically.
///
/// ```
/// use hvarch_qmp::QemuVersion;
/// let v: QemuVersion = "10.0.2".parse().unwrap();
/// assert!(v >= QemuVersion::new(7, 2, 0));
/// assert_eq!(v.to_string(), "10.0.2");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct QemuVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro (patch) version; QEMU development snapshots use 50+ here.
    pub micro: u32,
}

impl QemuVersion {
    /// A version from its three parts.
    pub const fn new(major: u32, minor: u32, micro: u32) -> Self {
        QemuVersion {
            major,
            minor,
            micro,
        }
    }

    /// Reads `{"major":..,"minor":..,"micro":..}` (the greeting's `version.qemu`, or the `qemu`
    /// member of `query-version`'s reply).
    pub fn from_json(qemu: &Value) -> Result<Self, Error> {
        let part = |key: &str| -> Result<u32, Error> {
            qemu.get(key)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    Error::Greeting(format!("QEMU version has no valid `{key}`: {qemu}"))
                })
        };
        Ok(QemuVersion::new(
            part("major")?,
            part("minor")?,
            part("micro")?,
        ))
    }

    /// Whether this version is at least `major.minor`.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        *self >= QemuVersion::new(major, minor, 0)
    }
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// Why a version string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid QEMU version {input:?}: expected `major.minor[.micro]`")]
pub struct ParseVersionError {
    input: String,
}

impl FromStr for QemuVersion {
    type Err = ParseVersionError;

    /// Parses `"10.0.2"`, `"10.0"`, or a `qemu --version`-style suffix such as
    /// `"10.0.2 (Debian 1:10.0.2+ds-1)"` (everything after the first space is ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseVersionError {
            input: s.to_owned(),
        };
        let head = s.split_whitespace().next().ok_or_else(err)?;
        let mut parts = head.split('.');
        let mut next = |required: bool| -> Result<u32, ParseVersionError> {
            match parts.next() {
                Some(p) => p.parse().map_err(|_| err()),
                None if required => Err(err()),
                None => Ok(0),
            }
        };
        let v = QemuVersion::new(next(true)?, next(true)?, next(false)?);
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        let v: QemuVersion = "10.0.2".parse().expect("parse");
        assert_eq!(v, QemuVersion::new(10, 0, 2));
        assert!(v > "9.2.50".parse().expect("parse"));
        assert!(QemuVersion::new(2, 10, 0) > QemuVersion::new(2, 9, 9));
        assert_eq!("7.2".parse(), Ok(QemuVersion::new(7, 2, 0)));
        assert_eq!(
            "10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)".parse(),
            Ok(QemuVersion::new(10, 0, 2))
        );
        assert!("10".parse::<QemuVersion>().is_err());
        assert!("a.b.c".parse::<QemuVersion>().is_err());
        assert!("1.2.3.4".parse::<QemuVersion>().is_err());
        assert!("".parse::<QemuVersion>().is_err());
        assert!(v.at_least(10, 0) && !v.at_least(10, 1));
    }

    #[test]
    fn from_json() {
        let j = serde_json::json!({"major": 10, "minor": 0, "micro": 2});
        assert_eq!(
            QemuVersion::from_json(&j).expect("ok"),
            QemuVersion::new(10, 0, 2)
        );
        assert!(QemuVersion::from_json(&serde_json::json!({"major": 10})).is_err());
        assert!(
            QemuVersion::from_json(&serde_json::json!({"major": -1, "minor": 0, "micro": 0}))
                .is_err()
        );
    }
}
