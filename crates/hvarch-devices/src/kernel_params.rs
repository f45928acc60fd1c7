//! The guest kernel command line as a list of validated parameters.
//!
//! The command line is a small language, and Linux reads it as bytes, not characters:
//!
//! - Parameters are separated by the bytes Linux's own `isspace()` accepts (its `_ctype`
//!   table in `lib/ctype.c`): `\t \n \v \f \r`, space, and byte `0xA0` (Latin-1's no-break
//!   space). `0xA0` is also a continuation byte of many UTF-8 characters (`à` is `C3 A0`), so
//!   an unquoted `à` splits a parameter in two.
//! - Outside double quotes a separator ends the parameter; a `"` toggles quoting wherever it
//!   appears, and there is no escape for `"` itself.
//! - A parameter is `key` or `key=value`: the key ends at the first `=` after its first byte.
//!   One leading `"` of the parameter, or of its value, is removed together with the
//!   parameter's last byte when that is a `"` (`next_arg()` in `lib/cmdline.c`).
//!
//! [`KernelParams`] enforces those rules when a parameter is added: keys may not hold a
//! separator byte, `=`, `"`, a control character or NUL; values may not hold `"` or NUL; a
//! value holding any separator byte is written in quotes (`key="a b"`). [`KernelParams::parse`]
//! splits a command line exactly as `next_arg()` does and refuses what the guest would read as
//! something else. So for every list it accepts, the kernel reads `render(p)` as exactly `p`,
//! and `parse(render(p)) == p`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Whether Linux's `isspace()` takes `byte` for a space: `\t`, `\n`, `\v`, `\f`, `\r`, space,
/// and `0xA0` (the `_S` entries of `_ctype` in the kernel's `lib/ctype.c`). These bytes, and
/// only these, separate kernel parameters outside double quotes.
///
/// ```
/// use hvarch_devices::kernel_params::is_linux_space;
/// assert!(is_linux_space(b' ') && is_linux_space(b'\x0b') && is_linux_space(0xA0));
/// assert!(!is_linux_space(0x85) && !is_linux_space(0x1c) && !is_linux_space(b'"'));
/// // `à` is C3 A0 in UTF-8: Linux splits an unquoted `à` in two.
/// assert!("à".bytes().any(is_linux_space));
/// ```
pub const fn is_linux_space(byte: u8) -> bool {
    matches!(byte, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ' | 0xA0)
}

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
            Some(v) if v.bytes().any(is_linux_space) => write!(f, "{}=\"{v}\"", self.key),
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
    /// The key holds a byte Linux reads as a separator, `=`, `"`, a control character or NUL.
    #[error("kernel parameter name {key:?} {reason}")]
    InvalidKey {
        /// The refused key.
        key: String,
        /// What it holds, and how Linux would read it.
        reason: String,
    },
    /// The value holds `"` (Linux has no escape for it) or NUL (the command line is a C string).
    #[error("value {value:?} of kernel parameter {key:?} {reason}")]
    InvalidValue {
        /// The parameter.
        key: String,
        /// The refused value.
        value: String,
        /// What it holds, and how Linux would read it.
        reason: String,
    },
    /// [`KernelParams::parse`]: Linux splits the command line inside a UTF-8 character, so the
    /// guest would read this parameter (lossily shown) and the rest of the character as
    /// separate parameters.
    #[error(
        "kernel command line: Linux reads parameter {param:?} as bytes that are not UTF-8, \
         because it splits a character at byte 0xA0 (quote the value that holds it)"
    )]
    SplitCharacter {
        /// The parameter Linux would read, with the broken character replaced by U+FFFD.
        param: String,
    },
}

/// Describes why `c`, found in a kernel parameter, is refused (`None`: it is not).
fn separator_reason(c: char) -> Option<String> {
    if c == '\0' {
        return Some("contains a NUL byte (the command line is a C string)".to_owned());
    }
    let mut buf = [0; 4];
    let bytes = c.encode_utf8(&mut buf).as_bytes();
    let byte = bytes.iter().copied().find(|&b| is_linux_space(b))?;
    Some(if bytes.len() == 1 {
        format!("contains {c:?}, which Linux reads as a parameter separator")
    } else {
        format!(
            "contains {c:?} (UTF-8 {}), and Linux reads byte {byte:#04X} as a parameter separator",
            bytes
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    })
}

fn check_key(key: &str) -> Result<(), KernelParamError> {
    if key.is_empty() {
        return Err(KernelParamError::EmptyKey);
    }
    let reason = key.chars().find_map(|c| match c {
        '=' => Some("contains '=', which ends a parameter name".to_owned()),
        '"' => Some("contains '\"', which Linux reads as a quote".to_owned()),
        c => separator_reason(c).or_else(|| {
            c.is_control()
                .then(|| format!("contains the control character {c:?}"))
        }),
    });
    match reason {
        Some(reason) => Err(KernelParamError::InvalidKey {
            key: key.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn check_value(key: &str, value: &str) -> Result<(), KernelParamError> {
    let reason = if value.contains('"') {
        "contains '\"', which Linux reads as a quote and cannot escape"
    } else if value.contains('\0') {
        "contains a NUL byte (the command line is a C string)"
    } else {
        return Ok(());
    };
    Err(KernelParamError::InvalidValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    })
}

/// Skips the bytes Linux's `skip_spaces()` skips.
fn skip_spaces(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|&b| !is_linux_space(b))
        .unwrap_or(line.len());
    &line[start..]
}

/// One parameter as Linux's `next_arg()` reads it from the start of `line` (which does not
/// start with a space): its key, its value, and the rest of the line after the separators
/// that follow it.
fn next_arg(line: &[u8]) -> (&[u8], Option<&[u8]>, &[u8]) {
    // A leading quote is dropped and opens a quoted section.
    let (token, quoted) = match line.split_first() {
        Some((b'"', rest)) => (rest, true),
        _ => (line, false),
    };
    let mut in_quote = quoted;
    // The key ends at the first '=' past the first byte (an '=' at 0 does not count).
    let mut equals = None;
    let mut end = token.len();
    for (i, &b) in token.iter().enumerate() {
        if !in_quote && is_linux_space(b) {
            end = i;
            break;
        }
        if equals.is_none() && i > 0 && b == b'=' {
            equals = Some(i);
        }
        if b == b'"' {
            in_quote = !in_quote;
        }
    }
    let rest = skip_spaces(token.get(end + 1..).unwrap_or_default());
    let token = &token[..end];
    let ends_in_quote = token.last() == Some(&b'"');
    let (key, value) = match equals {
        None if quoted && ends_in_quote => (&token[..end - 1], None),
        None => (token, None),
        Some(eq) => {
            let key = &token[..eq];
            let mut value = &token[eq + 1..];
            // A leading quote of the value is dropped; so is the parameter's last byte when
            // it is a quote, whether the value or the whole parameter was quoted.
            let value_quoted = value.first() == Some(&b'"');
            if value_quoted {
                value = &value[1..];
            }
            if (value_quoted || quoted) && ends_in_quote {
                value = value.strip_suffix(b"\"").unwrap_or(value);
            }
            (key, Some(value))
        }
    };
    (key, value, rest)
}

/// An ordered kernel command line. Later parameters win in the guest, so order is kept.
///
/// ```
/// use hvarch_devices::kernel_params::KernelParams;
/// let mut params = KernelParams::new();
/// params.push("console", Some("hvc0")).unwrap();
/// params.push("quiet", None).unwrap();
/// params.push("dyndbg", Some("file a.c +p")).unwrap();
/// // `à` holds byte 0xA0, a separator for Linux: the value is quoted.
/// params.push("agent.log", Some("àinit=/bin/sh")).unwrap();
/// assert_eq!(
///     params.to_string(),
///     r#"console=hvc0 quiet dyndbg="file a.c +p" agent.log="àinit=/bin/sh""#,
/// );
/// assert_eq!(params.to_string().parse::<KernelParams>().unwrap(), params);
/// assert!(params.push("bad key", None).is_err());
/// assert!(params.push("k", Some("say \"hi\"")).is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KernelParams(Vec<KernelParam>);

impl KernelParams {
    /// An empty command line.
    pub fn new() -> Self {
        KernelParams(Vec::new())
    }

    /// Appends `key` (bare when `value` is `None`), checking both; the error names the
    /// parameter.
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

    /// Parses a command line exactly as Linux splits it (`next_arg()` of `lib/cmdline.c`,
    /// on bytes; see the module docs), then checks each parameter as [`push`](Self::push)
    /// does. A parameter the guest would read as something other than UTF-8 text (an
    /// unquoted character holding byte `0xA0`) is refused.
    ///
    /// ```
    /// use hvarch_devices::kernel_params::{KernelParamError, KernelParams};
    /// let params = KernelParams::parse(r#""a=b c" d="e f" g"#).unwrap();
    /// assert_eq!(params.get("a").unwrap().value(), Some("b c"));
    /// assert_eq!(params.get("d").unwrap().value(), Some("e f"));
    /// // Linux reads `agent.log=\xC3` and `init=/bin/sh`: refused, not misread.
    /// assert!(matches!(
    ///     KernelParams::parse("agent.log=àinit=/bin/sh"),
    ///     Err(KernelParamError::SplitCharacter { .. })
    /// ));
    /// ```
    pub fn parse(cmdline: &str) -> Result<Self, KernelParamError> {
        let mut params = KernelParams::new();
        let mut rest = skip_spaces(cmdline.as_bytes());
        while !rest.is_empty() {
            let (key, value, next) = next_arg(rest);
            rest = next;
            let text = |bytes| {
                std::str::from_utf8(bytes).map_err(|_| KernelParamError::SplitCharacter {
                    param: match value {
                        Some(v) => format!(
                            "{}={}",
                            String::from_utf8_lossy(key),
                            String::from_utf8_lossy(v)
                        ),
                        None => String::from_utf8_lossy(key).into_owned(),
                    },
                })
            };
            let key = text(key)?;
            let value = value.map(text).transpose()?;
            params.push(key, value)?;
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
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestCaseError;

    /// A literal port of Linux's command-line splitter, kept apart from the production parser
    /// so the two check each other: `isspace()` from `_ctype` (`lib/ctype.c`), `skip_spaces()`,
    /// `next_arg()` (`lib/cmdline.c`) and the loop of `parse_args()` (`kernel/params.c`),
    /// working on a NUL-terminated byte buffer the way the C does, pointers as indices.
    mod linux {
        const C: u8 = 0x20; // _C
        const S: u8 = 0x08; // _S
        const SP: u8 = 0x80; // _SP

        /// The `_S` bits of `_ctype[]` (only what `isspace()` reads).
        fn ctype(c: u8) -> u8 {
            match c {
                0x09..=0x0D => C | S,
                0x20 => S | SP,
                0xA0 => S | SP,
                _ => 0,
            }
        }

        fn isspace(c: u8) -> bool {
            ctype(c) & S != 0
        }

        fn skip_spaces(buf: &[u8], mut str: usize) -> usize {
            while isspace(buf[str]) {
                str += 1;
            }
            str
        }

        /// `char *next_arg(char *args, char **param, char **val)`.
        fn next_arg(
            buf: &mut [u8],
            mut args: usize,
            param: &mut usize,
            val: &mut Option<usize>,
        ) -> usize {
            let mut i: usize;
            let mut equals: usize = 0;
            let mut in_quote = false;
            let mut quoted = false;

            if buf[args] == b'"' {
                args += 1;
                in_quote = true;
                quoted = true;
            }

            i = 0;
            while buf[args + i] != 0 {
                if isspace(buf[args + i]) && !in_quote {
                    break;
                }
                if equals == 0 && buf[args + i] == b'=' {
                    equals = i;
                }
                if buf[args + i] == b'"' {
                    in_quote = !in_quote;
                }
                i += 1;
            }

            *param = args;
            if equals == 0 {
                *val = None;
            } else {
                buf[args + equals] = 0;
                let mut v = args + equals + 1;
                // Don't include quotes in value.
                if buf[v] == b'"' {
                    v += 1;
                    if buf[args + i - 1] == b'"' {
                        buf[args + i - 1] = 0;
                    }
                }
                *val = Some(v);
            }
            if quoted && i > 0 && buf[args + i - 1] == b'"' {
                buf[args + i - 1] = 0;
            }

            if buf[args + i] != 0 {
                buf[args + i] = 0;
                args += i + 1;
            } else {
                args += i;
            }

            // Chew up trailing spaces.
            skip_spaces(buf, args)
        }

        fn c_string(buf: &[u8], at: usize) -> Vec<u8> {
            buf[at..].iter().copied().take_while(|&b| b != 0).collect()
        }

        /// The `(param, val)` pairs `parse_args()` hands on for `cmdline`, as bytes.
        pub fn split(cmdline: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
            assert!(!cmdline.contains(&0), "a C string holds no NUL");
            let mut buf = cmdline.to_vec();
            buf.push(0);
            let mut out = Vec::new();
            // Chew leading spaces.
            let mut args = skip_spaces(&buf, 0);
            while buf[args] != 0 {
                let mut param = 0;
                let mut val = None;
                args = next_arg(&mut buf, args, &mut param, &mut val);
                out.push((c_string(&buf, param), val.map(|v| c_string(&buf, v))));
            }
            out
        }
    }

    /// What Linux reads from `line`, as (key, value) text, or `None` when a parameter is not
    /// UTF-8.
    fn linux_reads(line: &str) -> Option<Vec<(String, Option<String>)>> {
        linux::split(line.as_bytes())
            .into_iter()
            .map(|(k, v)| {
                Some((
                    String::from_utf8(k).ok()?,
                    match v {
                        Some(v) => Some(String::from_utf8(v).ok()?),
                        None => None,
                    },
                ))
            })
            .collect()
    }

    fn pairs(params: &KernelParams) -> Vec<(String, Option<String>)> {
        params
            .iter()
            .map(|p| (p.key().to_owned(), p.value().map(str::to_owned)))
            .collect()
    }

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
        assert_eq!(linux_reads(line).unwrap(), pairs(&params));
    }

    /// Issue 10 §3: `à` is C3 A0, and Linux splits at 0xA0. Rendered raw (as before), the
    /// guest read `agent.log=\xC3` and `init=/bin/sh`.
    #[test]
    fn a_value_holding_byte_0xa0_stays_one_parameter() {
        let mut params = KernelParams::new();
        params.push("agent.log", Some("àinit=/bin/sh")).unwrap();
        params.push("quiet", None).unwrap();
        let line = params.to_string();
        assert_eq!(line, "agent.log=\"àinit=/bin/sh\" quiet");
        assert_eq!(
            linux::split(line.as_bytes()),
            [
                (
                    b"agent.log".to_vec(),
                    Some("àinit=/bin/sh".as_bytes().to_vec())
                ),
                (b"quiet".to_vec(), None),
            ]
        );
        assert_eq!(KernelParams::parse(&line).unwrap(), params);
        // The same text unquoted is what Linux splits: parse refuses it, naming what the
        // guest would read.
        let err = KernelParams::parse("agent.log=àinit=/bin/sh").unwrap_err();
        assert_eq!(
            err,
            KernelParamError::SplitCharacter {
                param: "agent.log=\u{fffd}".into()
            }
        );
        assert!(err.to_string().contains("agent.log"), "{err}");
    }

    #[test]
    fn keys_holding_separator_bytes_are_refused_naming_them() {
        for key in [
            "bad key", "a\u{a0}b", "àgent", "tab\tkey", "a=b", "q\"k", "c\u{1}",
        ] {
            let err = KernelParams::new().push(key, Some("v")).unwrap_err();
            assert!(
                matches!(&err, KernelParamError::InvalidKey { key: k, .. } if k == key),
                "{key:?}: {err:?}"
            );
            assert!(err.to_string().contains(&format!("{key:?}")), "{err}");
        }
        let err = KernelParams::new().push("àgent", None).unwrap_err();
        assert!(err.to_string().contains("C3 A0"), "{err}");
        // Unicode spaces without a separator byte are not separators for Linux.
        KernelParams::new().push("a\u{2003}b", None).unwrap();
    }

    #[test]
    fn refuses_what_linux_cannot_read() {
        let mut p = KernelParams::new();
        assert_eq!(p.push("", None).unwrap_err(), KernelParamError::EmptyKey);
        let err = p.push("k", Some("say \"hi\"")).unwrap_err();
        assert!(matches!(&err, KernelParamError::InvalidValue { key, .. } if key == "k"));
        assert!(matches!(
            p.push("k", Some("a\0b")),
            Err(KernelParamError::InvalidValue { .. })
        ));
        assert!(p.is_empty());
        // Whitespace and control characters in values are quoted, not refused.
        p.push("k", Some("a\nb\u{1}")).unwrap();
        assert_eq!(p.to_string(), "k=\"a\nb\u{1}\"");
    }

    /// `parse` reads what `next_arg()` reads, quirks included.
    #[test]
    fn parse_follows_next_arg() {
        type Read<'a> = &'a [(&'a str, Option<&'a str>)];
        let cases: &[(&str, Read)] = &[
            // A quoted parameter loses both quotes; a quoted value too.
            (r#""a=b c""#, &[("a", Some("b c"))]),
            (r#"a="b c""#, &[("a", Some("b c"))]),
            (r#""flag""#, &[("flag", None)]),
            (r#"a="""#, &[("a", Some(""))]),
            (r#"a=""#, &[("a", Some(""))]),
            // An unterminated quote runs to the end of the line.
            (r#"a="b c d=e"#, &[("a", Some("b c d=e"))]),
            // Separators: every isspace() byte, leading and trailing ones skipped.
            (
                " \t\na=1\x0b\x0cb\r c ",
                &[("a", Some("1")), ("b", None), ("c", None)],
            ),
            // The key ends at the first '=' past its first byte.
            ("a==b", &[("a", Some("=b"))]),
            ("a=", &[("a", Some(""))]),
            // Non-separator Unicode spaces and control bytes stay in the value.
            ("a=b\u{2003}c\u{85}", &[("a", Some("b\u{2003}c\u{85}"))]),
        ];
        for (line, expected) in cases {
            let expected: Vec<(String, Option<String>)> = expected
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
                .collect();
            assert_eq!(linux_reads(line).unwrap(), expected, "port on {line:?}");
            let params = KernelParams::parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(pairs(&params), expected, "parse on {line:?}");
        }
        // What Linux reads but the model refuses (it could not write it back the same).
        for (line, key) in [
            (r#"a=b"c d" e"#, "a"),       // value `b"c d"`
            (r#"a="b"c"#, "a"),           // value `b"c`
            (r#"k"x y"=1"#, r#"k"x y""#), // key with a quote and a space
            ("=a=b", "=a"),               // '=' at 0 is not the key's end
        ] {
            let err = KernelParams::parse(line).unwrap_err();
            assert!(
                err.to_string().contains(&format!("{key:?}")),
                "{line:?}: {err}"
            );
        }
        assert_eq!(
            KernelParams::parse("\"").unwrap_err(),
            KernelParamError::EmptyKey
        );
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
        assert!(serde_json::from_str::<KernelParams>("\"a=b\\\"c\"").is_err());
        assert!(serde_json::from_str::<KernelParams>("\"a=\u{e0}b\"").is_err());
    }

    /// Characters the command-line language cares about: every separator byte alone or
    /// inside a multi-byte character, quotes, `=`, NUL, controls, and plain text.
    fn tricky_char() -> impl Strategy<Value = char> {
        prop_oneof![
            4 => prop::char::range('a', 'z'),
            2 => prop::sample::select(vec![
                ' ', '\t', '\n', '\u{b}', '\u{c}', '\r', '\u{a0}', 'à', 'Ġ', '蠀', '\u{1f820}',
                '"', '=', '\0', '\u{1}', '\u{85}', '\u{2003}', '-', '.', '/', ',',
            ]),
            1 => any::<char>(),
        ]
    }

    fn tricky_text(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(tricky_char(), 0..max).prop_map(|c| c.into_iter().collect())
    }

    /// Command lines built from the pieces the language is made of: words, `=`, quotes,
    /// separators (`à` included), and arbitrary characters. No NUL: it is a C string.
    fn tricky_line(max: usize) -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            3 => "[a-z]{1,4}",
            2 => Just("\"".to_owned()),
            2 => Just("=".to_owned()),
            2 => prop::sample::select(vec![" ", "\t", "\n", "\u{b}", "\u{c}", "\r", "à", "\u{a0}"])
                .prop_map(str::to_owned),
            1 => tricky_char().prop_filter_map("NUL", |c| (c != '\0').then(|| c.to_string())),
            // Quoted parameters and values, whole.
            1 => "\"[a-z]{1,3}(=[a-z à]{0,4})?\"|[a-z]{1,3}=\"[a-z à]{0,4}\"",
        ];
        prop::collection::vec(piece, 0..max).prop_map(|p| p.concat())
    }

    /// Whether the model must refuse `key` = `value`, by the rules of the module docs written
    /// out again independently.
    fn must_refuse(key: &str, value: Option<&str>) -> bool {
        key.is_empty()
            || key
                .bytes()
                .any(|b| is_linux_space(b) || b"=\"\0".contains(&b))
            || key.chars().any(char::is_control)
            || value.is_some_and(|v| v.contains(['"', '\0']))
    }

    /// Keys and values mostly acceptable, often holding separators, quotes and `à`.
    fn arb_list() -> impl Strategy<Value = Vec<(String, Option<String>)>> {
        let key = prop_oneof![
            3 => "[a-z][a-z0-9_.-]{0,10}",
            1 => tricky_text(8),
        ];
        prop::collection::vec((key, prop::option::of(tricky_text(16))), 0..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: crate::test_support::cases(512, 1),
            ..ProptestConfig::default()
        })]

        /// For arbitrary parameters, Linux (the port above) reads the rendering as exactly the
        /// parameters that were accepted, and a refusal names the parameter.
        #[test]
        fn linux_reads_back_what_was_pushed(list in arb_list()) {
            let mut params = KernelParams::new();
            let mut accepted = Vec::new();
            for (key, value) in &list {
                match params.push(key, value.as_deref()) {
                    Ok(_) => accepted.push((key.clone(), value.clone())),
                    Err(e) => {
                        prop_assert!(must_refuse(key, value.as_deref()), "{:?}={:?}: {}", key, value, e);
                        if !key.is_empty() {
                            prop_assert!(e.to_string().contains(&format!("{key:?}")), "{}", e);
                        }
                        continue;
                    }
                }
                prop_assert!(!must_refuse(key, value.as_deref()), "accepted {:?}={:?}", key, value);
            }
            let line = params.to_string();
            prop_assert_eq!(linux_reads(&line), Some(accepted.clone()), "line {:?}", line);
            prop_assert_eq!(KernelParams::parse(&line)?, params);
        }

        /// `parse` agrees with the port on any line: what it accepts is what Linux reads, and
        /// it refuses the first parameter the model cannot hold or Linux reads as broken UTF-8.
        #[test]
        fn parse_agrees_with_linux(line in tricky_line(40)) {
            let mut expected = Vec::new();
            let mut refusal = None;
            for (key, value) in linux::split(line.as_bytes()) {
                let key = String::from_utf8(key).ok();
                let value = value.map(String::from_utf8).transpose().ok();
                let (Some(key), Some(value)) = (key, value) else {
                    refusal = Some(None);
                    break;
                };
                if must_refuse(&key, value.as_deref()) {
                    refusal = Some(Some(key));
                    break;
                }
                expected.push((key, value));
            }
            match (KernelParams::parse(&line), refusal) {
                (Ok(params), None) => prop_assert_eq!(pairs(&params), expected),
                (Err(KernelParamError::SplitCharacter { .. }), Some(None)) => {}
                (Err(KernelParamError::EmptyKey), Some(Some(key))) if key.is_empty() => {}
                (
                    Err(KernelParamError::InvalidKey { key, .. } | KernelParamError::InvalidValue { key, .. }),
                    Some(Some(linux_key)),
                ) => prop_assert_eq!(key, linux_key, "{:?}", line),
                (result, refusal) => {
                    return Err(TestCaseError::fail(format!(
                        "{line:?}: parse gives {result:?}; Linux reads {expected:?}, then {refusal:?}"
                    )));
                }
            }
        }
    }

    /// The strategies above produce acceptable parameters most of the time: the round trip
    /// is not vacuous.
    #[test]
    fn the_strategy_mostly_produces_acceptable_parameters() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut accepted, mut total) = (0, 0);
        for _ in 0..256 {
            let list = arb_list().new_tree(&mut runner).unwrap().current();
            for (key, value) in list {
                total += 1;
                accepted += usize::from(!must_refuse(&key, value.as_deref()));
            }
        }
        assert!(
            accepted * 10 >= total * 5,
            "{accepted} of {total} acceptable"
        );
        assert!(accepted < total, "no refusal is exercised");
    }
}
