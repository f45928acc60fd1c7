//! The guest kernel command line as a list of validated parameters.
//!
//! Linux splits its command line at spaces outside double quotes; a parameter is `key`,
//! `key=value` or `key="value with spaces"`, and there is no escape for `"` itself.
//! [`KernelParams`] enforces those rules when a parameter is added, quotes values that need
//! it when rendering, and parses a command line back ([`KernelParams::parse`]), so
//! `parse(render(p)) == p` for every list it accepts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One kernel parameter: a bare `key` or `key=value`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelParam {
    key: String,
    value: Option<String>,
}

impl KernelParam {
    /// The parameter's name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value, `None` for a bare flag such as `quiet` or `ro`.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

impl fmt::Display for KernelParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => f.write_str(&self.key),
            Some(v) if v.chars().any(char::is_whitespace) => write!(f, "{}=\"{v}\"", self.key),
            Some(v) => write!(f, "{}={v}", self.key),
        }
    }
}

/// Why a kernel parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelParamError {
    /// The key is empty.
    #[error("kernel parameter with an empty name")]
    EmptyKey,
    /// The key holds whitespace, `=`, `"` or a control character.
    #[error(
        "kernel parameter name {0:?} may not contain whitespace, '=', '\"' or control characters"
    )]
    InvalidKey(String),
    /// The value holds `"` or a control character (Linux has no escape for them).
    #[error(
        "value {value:?} of kernel parameter {key:?} may not contain '\"' or control characters"
    )]
    InvalidValue {
        /// The parameter.
        key: String,
        /// The refused value.
        value: String,
    },
    /// A command line with an unterminated `"`.
    #[error("unterminated quote in kernel command line {0:?}")]
    UnterminatedQuote(String),
}

fn check_key(key: &str) -> Result<(), KernelParamError> {
    if key.is_empty() {
        return Err(KernelParamError::EmptyKey);
    }
    if key
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '=' || c == '"')
    {
        return Err(KernelParamError::InvalidKey(key.to_owned()));
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), KernelParamError> {
    if value
        .chars()
        .any(|c| c == '"' || (c.is_control() && c != '\t'))
    {
        return Err(KernelParamError::InvalidValue {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// An ordered kernel command line. Later parameters win in the guest, so order is kept.
///
/// ```
/// use hvarch_devices::kernel_params::KernelParams;
/// let mut params = KernelParams::new();
/// params.push("console", Some("hvc0")).unwrap();
/// params.push("quiet", None).unwrap();
/// params.push("dyndbg", Some("file a.c +p")).unwrap();
/// assert_eq!(params.to_string(), r#"console=hvc0 quiet dyndbg="file a.c +p""#);
/// assert_eq!(params.to_string().parse::<KernelParams>().unwrap(), params);
/// assert!(params.push("bad key", None).is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KernelParams(Vec<KernelParam>);

impl KernelParams {
    /// An empty command line.
    pub fn new() -> Self {
        KernelParams(Vec::new())
    }

    /// Appends `key` (bare when `value` is `None`), checking both.
    pub fn push(&mut self, key: &str, value: Option<&str>) -> Result<&mut Self, KernelParamError> {
        check_key(key)?;
        if let Some(v) = value {
            check_value(key, v)?;
        }
        self.0.push(KernelParam {
            key: key.to_owned(),
            value: value.map(str::to_owned),
        });
        Ok(self)
    }

    /// Appends every parameter of `other`.
    pub fn extend(&mut self, other: &KernelParams) -> &mut Self {
        self.0.extend(other.0.iter().cloned());
        self
    }

    /// Parses a command line with Linux's rules (spaces separate, double quotes group).
    pub fn parse(cmdline: &str) -> Result<Self, KernelParamError> {
        let mut params = KernelParams::new();
        let mut chars = cmdline.chars().peekable();
        loop {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.peek().is_none() {
                break;
            }
            let mut word = String::new();
            let mut quoted = false;
            let mut equals_at = None;
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() && !quoted {
                    break;
                }
                chars.next();
                match c {
                    '"' => quoted = !quoted,
                    '=' if equals_at.is_none() && !quoted => {
                        equals_at = Some(word.len());
                        word.push(c);
                    }
                    _ => word.push(c),
                }
            }
            if quoted {
                return Err(KernelParamError::UnterminatedQuote(cmdline.to_owned()));
            }
            match equals_at {
                Some(i) => params.push(&word[..i], Some(&word[i + 1..]))?,
                None => params.push(&word, None)?,
            };
        }
        Ok(params)
    }

    /// The first parameter named `key`.
    pub fn get(&self, key: &str) -> Option<&KernelParam> {
        self.0.iter().find(|p| p.key == key)
    }

    /// Whether a parameter named `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The parameters in order.
    pub fn iter(&self) -> impl Iterator<Item = &KernelParam> {
        self.0.iter()
    }

    /// The number of parameters.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no parameter.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KernelParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, param) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{param}")?;
        }
        Ok(())
    }
}

impl FromStr for KernelParams {
    type Err = KernelParamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KernelParams::parse(s)
    }
}

impl Serialize for KernelParams {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KernelParams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kata_arm64_line_parses_and_renders_the_same() {
        let line = "console=hvc0 console=hvc1 iommu.passthrough=0 root=/dev/pmem0p1 \
                    rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=ext4 quiet \
                    systemd.show_status=false panic=1 nr_cpus=123 agent.use_vsock=false";
        let params = KernelParams::parse(line).unwrap();
        assert_eq!(params.len(), 12);
        assert_eq!(params.get("ro").unwrap().value(), None);
        assert_eq!(
            params.get("rootflags").unwrap().value(),
            Some("dax,data=ordered,errors=remount-ro")
        );
        assert_eq!(params.to_string(), line);
    }

    #[test]
    fn refuses_what_linux_cannot_read() {
        let mut p = KernelParams::new();
        assert_eq!(p.push("", None).unwrap_err(), KernelParamError::EmptyKey);
        assert!(matches!(
            p.push("a=b", None),
            Err(KernelParamError::InvalidKey(_))
        ));
        assert!(matches!(
            p.push("k", Some("say \"hi\"")),
            Err(KernelParamError::InvalidValue { .. })
        ));
        assert!(KernelParams::parse("a=\"open").is_err());
        assert!(p.is_empty());
    }

    #[test]
    fn empty_value_differs_from_bare_flag() {
        let params = KernelParams::parse("a= b").unwrap();
        assert_eq!(params.get("a").unwrap().value(), Some(""));
        assert_eq!(params.get("b").unwrap().value(), None);
        assert_eq!(params.to_string(), "a= b");
    }

    #[test]
    fn serde_as_a_string() {
        let params = KernelParams::parse("console=hvc0 quiet").unwrap();
        let json = serde_json::to_string(&params).unwrap();
        assert_eq!(json, "\"console=hvc0 quiet\"");
        assert_eq!(serde_json::from_str::<KernelParams>(&json).unwrap(), params);
        assert!(serde_json::from_str::<KernelParams>("\"a=\\\"x\"").is_err());
    }

    fn arb_params() -> impl Strategy<Value = Vec<(String, Option<String>)>> {
        proptest::collection::vec(
            (
                "[^\\s=\"\\p{Cc}]{1,12}",
                proptest::option::of("[^\"\\p{Cc}]{0,16}"),
            ),
            0..8,
        )
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(list in arb_params()) {
            let mut params = KernelParams::new();
            for (k, v) in &list {
                params.push(k, v.as_deref()).unwrap();
            }
            let parsed = KernelParams::parse(&params.to_string()).unwrap();
            prop_assert_eq!(parsed, params);
        }

        #[test]
        fn parse_never_panics(line in "\\PC{0,64}") {
            let _ = KernelParams::parse(&line);
        }
    }
}
