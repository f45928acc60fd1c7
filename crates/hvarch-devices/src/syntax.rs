//! QEMU's two argument syntaxes: `key=value,…` options and JSON.
//!
//! **Option syntax** (QemuOpts / keyval): properties are joined with `,`; a `,` inside a value
//! is written `,,`. That is the only escape QEMU has, and hvarch applies it to every value, so
//! a path or serial number holding `,` or `=` can never inject an option (a value may contain
//! `=` freely: QEMU splits a property at its first `=`). Keys are ours and never need escaping.
//! An option may start with an *implied* value without a key (`-device virtio-blk-pci,…`).
//! [`parse_options`] reads this syntax back following QEMU's rules; the test-suite proves
//! `parse(render(x)) == x` for arbitrary values.
//!
//! **JSON syntax** (`-device '{"driver": …}'`, and QMP arguments): each [`Value`] keeps its
//! JSON type; nested maps are objects.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::{Map, Value as Json};

use crate::error::{Error, Result};
use crate::fd::{FdArg, FdResolver};
use crate::props::{Props, Value};

/// Doubles every `,` in `value`, as QEMU's option syntax requires.
///
/// ```
/// use hvarch_devices::syntax::escape;
/// assert_eq!(escape("/images/a,b=c.img"), "/images/a,,b=c.img");
/// assert_eq!(escape("plain"), "plain");
/// ```
pub fn escape(value: &str) -> Cow<'_, str> {
    if value.contains(',') {
        Cow::Owned(value.replace(',', ",,"))
    } else {
        Cow::Borrowed(value)
    }
}

/// Formats a byte count the way QEMU reads sizes: with the largest exact binary suffix
/// (`1024` → `1K`, `2147483648` → `2G`), or plain digits when no suffix is exact.
///
/// ```
/// use hvarch_devices::syntax::format_size;
/// assert_eq!(format_size(2 << 30), "2G");
/// assert_eq!(format_size(1536), "1536");
/// assert_eq!(format_size(0), "0");
/// ```
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, char); 6] = [
        (60, 'E'),
        (50, 'P'),
        (40, 'T'),
        (30, 'G'),
        (20, 'M'),
        (10, 'K'),
    ];
    if bytes != 0 {
        for (shift, suffix) in UNITS {
            if bytes.trailing_zeros() >= shift {
                return format!("{}{suffix}", bytes >> shift);
            }
        }
    }
    bytes.to_string()
}

fn check_nul(what: &str, key: &str, s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(Error::NulByte {
            what: what.to_owned(),
            field: key.to_owned(),
        });
    }
    Ok(())
}

fn fd_list(list: &[FdArg], fds: &mut dyn FdResolver) -> Result<String> {
    let mut out = String::new();
    for (i, fd) in list.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&fds.resolve(fd)?);
    }
    Ok(out)
}

/// Renders a scalar value as option-syntax text (unescaped).
fn scalar_text(value: &Value, fds: &mut dyn FdResolver) -> Result<Option<String>> {
    Ok(Some(match value {
        Value::Bool(b) => if *b { "on" } else { "off" }.to_owned(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Size(s) => format_size(*s),
        Value::Str(s) => s.to_string(),
        Value::Fd(fd) => fds.resolve(fd)?,
        Value::FdList(list) => fd_list(list, fds)?,
        Value::Map(_) => return Ok(None),
    }))
}

/// Renders `props` in option syntax, with `implied` (the value of the implied first key, e.g.
/// the driver) first when given. `what` names the option in errors.
pub fn render_options(
    what: &str,
    implied: Option<&str>,
    props: &Props,
    fds: &mut dyn FdResolver,
) -> Result<String> {
    render_options_except(what, implied, props, None, fds)
}

/// [`render_options`], leaving out the property `skip` (the implied key, already written).
pub(crate) fn render_options_except(
    what: &str,
    implied: Option<&str>,
    props: &Props,
    skip: Option<&str>,
    fds: &mut dyn FdResolver,
) -> Result<String> {
    let mut out = String::with_capacity(128);
    if let Some(first) = implied {
        check_nul(what, skip.unwrap_or(what), first)?;
        push_escaped(&mut out, first);
    }
    let mut prefix = String::new();
    render_into(what, &mut prefix, props, skip, fds, &mut out)?;
    Ok(out)
}

/// Appends `text` with every `,` doubled.
fn push_escaped(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(i) = rest.find(',') {
        out.push_str(&rest[..=i]);
        out.push(',');
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// [`push_escaped`] that also refuses a NUL byte, in the same pass over `text`.
fn push_escaped_checked(out: &mut String, what: &str, key: &str, text: &str) -> Result<()> {
    let mut rest = text;
    while let Some(i) = rest.find([',', '\0']) {
        if rest.as_bytes()[i] == 0 {
            return Err(Error::NulByte {
                what: what.to_owned(),
                field: key.to_owned(),
            });
        }
        out.push_str(&rest[..=i]);
        out.push(',');
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    Ok(())
}

/// Appends a scalar's option-syntax text, escaped, without intermediate strings where the
/// value is already text.
fn push_scalar(
    out: &mut String,
    what: &str,
    key: &str,
    value: &Value,
    fds: &mut dyn FdResolver,
) -> Result<()> {
    match value {
        Value::Bool(b) => out.push_str(if *b { "on" } else { "off" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        Value::Str(s) => push_escaped_checked(out, what, key, s)?,
        Value::Map(_) => {}
        other => {
            let text = scalar_text(other, fds)?.unwrap_or_default();
            check_nul(what, key, &text)?;
            push_escaped(out, &text);
        }
    }
    Ok(())
}

fn render_into(
    what: &str,
    prefix: &mut String,
    props: &Props,
    skip: Option<&str>,
    fds: &mut dyn FdResolver,
    out: &mut String,
) -> Result<()> {
    for (key, value) in props.iter() {
        if prefix.is_empty() && skip == Some(key) {
            continue;
        }
        match value {
            Value::Map(inner) => {
                let len = prefix.len();
                prefix.push_str(key);
                prefix.push('.');
                render_into(what, prefix, inner, None, fds, out)?;
                prefix.truncate(len);
            }
            scalar => {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(prefix);
                out.push_str(key);
                out.push('=');
                push_scalar(out, what, key, scalar, fds)?;
            }
        }
    }
    Ok(())
}

/// Renders `props` as a JSON object, each value with its JSON type.
pub fn render_json(what: &str, props: &Props, fds: &mut dyn FdResolver) -> Result<Json> {
    let mut map = Map::new();
    for (key, value) in props.iter() {
        let json = match value {
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::UInt(u) | Value::Size(u) => Json::from(*u),
            Value::Str(s) => {
                check_nul(what, key, s)?;
                Json::String(s.to_string())
            }
            Value::Fd(fd) => Json::String(fds.resolve(fd)?),
            Value::FdList(list) => Json::String(fd_list(list, fds)?),
            Value::Map(inner) => render_json(what, inner, fds)?,
        };
        map.insert(key.to_owned(), json);
    }
    Ok(Json::Object(map))
}

/// Why [`parse_options`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A property without `=` where no implied key applies.
    #[error("property {0:?} has no '=' and is not the first property")]
    MissingEquals(String),
    /// A property with an empty key.
    #[error("empty property name")]
    EmptyKey,
}

/// Parses QEMU option syntax back into `(key, value)` pairs, following QemuOpts' rules:
/// properties are separated by a single `,`; `,,` is a literal comma; a property's key ends at
/// its first `=`; a first property without `=` is the value of `implied_key`.
///
/// ```
/// use hvarch_devices::syntax::parse_options;
/// let props = parse_options("virtio-blk-pci,drive=d0,serial=a,,b=c", Some("driver")).unwrap();
/// assert_eq!(props, vec![
///     ("driver".to_string(), "virtio-blk-pci".to_string()),
///     ("drive".to_string(), "d0".to_string()),
///     ("serial".to_string(), "a,b=c".to_string()),
/// ]);
/// ```
pub fn parse_options(
    input: &str,
    implied_key: Option<&str>,
) -> Result<Vec<(String, String)>, ParseError> {
    let mut out = Vec::new();
    let bytes = input.as_bytes();
    let mut pos = 0;
    let mut first = true;
    while pos < bytes.len() || (first && !input.is_empty()) {
        // The key runs to the first '=' or ','.
        let key_end = input[pos..]
            .find(['=', ','])
            .map_or(input.len(), |i| pos + i);
        let (key, value_start) = if bytes.get(key_end) == Some(&b'=') {
            (input[pos..key_end].to_owned(), key_end + 1)
        } else if let (true, Some(implied)) = (first, implied_key) {
            (implied.to_owned(), pos)
        } else {
            return Err(ParseError::MissingEquals(input[pos..key_end].to_owned()));
        };
        if key.is_empty() {
            return Err(ParseError::EmptyKey);
        }
        // The value runs to the first single ','; ",," is a literal comma.
        let mut value = String::new();
        let mut i = value_start;
        loop {
            match input[i..].find(',') {
                None => {
                    value.push_str(&input[i..]);
                    i = input.len();
                    break;
                }
                Some(off) => {
                    value.push_str(&input[i..i + off]);
                    let comma = i + off;
                    if bytes.get(comma + 1) == Some(&b',') {
                        value.push(',');
                        i = comma + 2;
                    } else {
                        i = comma + 1;
                        break;
                    }
                }
            }
        }
        out.push((key, value));
        pos = i;
        first = false;
        if pos >= bytes.len() {
            break;
        }
    }
    Ok(out)
}

/// Flattens `props` to the `(dotted key, text)` pairs the option syntax carries
/// (what [`parse_options`] returns for [`render_options`]' output).
pub fn flatten(props: &Props, fds: &mut dyn FdResolver) -> Result<Vec<(String, String)>> {
    fn walk(
        prefix: &str,
        props: &Props,
        fds: &mut dyn FdResolver,
        out: &mut Vec<(String, String)>,
    ) -> Result<()> {
        for (key, value) in props.iter() {
            match value {
                Value::Map(inner) => walk(&format!("{prefix}{key}."), inner, fds, out)?,
                scalar => out.push((
                    format!("{prefix}{key}"),
                    scalar_text(scalar, fds)?.unwrap_or_default(),
                )),
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk("", props, fds, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use proptest::prelude::*;

    #[test]
    fn renders_booleans_sizes_and_nesting() {
        let props = Props::new()
            .with("driver", "raw")
            .with("read-only", true)
            .size("size", 512 << 20)
            .with(
                "file",
                Props::new().with("driver", "file").with("filename", "/a,b"),
            );
        let s = render_options("blockdev", None, &props, &mut NoFds).unwrap();
        assert_eq!(
            s,
            "driver=raw,read-only=on,size=512M,file.driver=file,file.filename=/a,,b"
        );
        let json = render_json("blockdev", &props, &mut NoFds).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"driver":"raw","read-only":true,"size":536870912u64,
                "file":{"driver":"file","filename":"/a,b"}})
        );
    }

    #[test]
    fn nul_is_an_error_naming_the_key() {
        let props = Props::new().with("path", "a\0b");
        let err = render_options("chardev", Some("socket"), &props, &mut NoFds).unwrap_err();
        assert_eq!(err.to_string(), "chardev: `path` contains a NUL byte");
        assert!(render_json("chardev", &props, &mut NoFds).is_err());
    }

    #[test]
    fn parser_follows_qemu_rules() {
        assert_eq!(
            parse_options("a=1,,2,b=,c==", None).unwrap(),
            vec![
                ("a".into(), "1,2".into()),
                ("b".into(), String::new()),
                ("c".into(), "=".into())
            ]
        );
        assert!(parse_options("a=1,flag", None).is_err());
        assert!(parse_options("=1", None).is_err());
        assert_eq!(
            parse_options("socket", Some("backend")).unwrap(),
            vec![("backend".into(), "socket".into())]
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(format_size(1 << 10), "1K");
        assert_eq!(format_size(3 << 40), "3T");
        assert_eq!(format_size(65537), "65537");
        assert_eq!(format_size(u64::MAX), u64::MAX.to_string());
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let text = "[^\u{0}]{0,24}";
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            any::<u64>().prop_map(Value::Size),
            text.prop_map(Value::from),
            // The characters the escaping exists for, often.
            "[,=\" ']{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| {
            proptest::collection::btree_map("[a-z][a-z0-9-]{0,6}", inner, 1..4)
                .prop_map(|kv| Value::Map(kv.into_iter().collect()))
        })
    }

    fn arb_props() -> impl Strategy<Value = Props> {
        proptest::collection::btree_map("[a-z][a-z0-9_-]{0,8}", arb_value(), 0..8)
            .prop_map(|kv| kv.into_iter().collect())
    }

    /// Whether `json` holds exactly `props`, each value with its JSON type.
    fn same_properties(props: &Props, json: &serde_json::Value) -> bool {
        let Some(object) = json.as_object() else {
            return false;
        };
        object.len() == props.len()
            && props.iter().all(|(key, value)| {
                let Some(j) = object.get(key) else {
                    return false;
                };
                match value {
                    Value::Bool(b) => j.as_bool() == Some(*b),
                    Value::Int(i) => j.as_i64() == Some(*i),
                    Value::UInt(u) | Value::Size(u) => j.as_u64() == Some(*u),
                    Value::Str(s) => j.as_str() == Some(s.as_ref()),
                    Value::Map(inner) => same_properties(inner, j),
                    Value::Fd(_) | Value::FdList(_) => false,
                }
            })
    }

    proptest! {
        #[test]
        fn escape_round_trip(value in "[^\u{0}]*") {
            let rendered = format!("k={}", escape(&value));
            let parsed = parse_options(&rendered, None).unwrap();
            prop_assert_eq!(parsed, vec![("k".to_string(), value)]);
        }

        #[test]
        fn options_round_trip(implied in "[a-z][a-z0-9-]{0,10}", props in arb_props()) {
            let rendered = render_options("t", Some(&implied), &props, &mut NoFds).unwrap();
            let parsed = parse_options(&rendered, Some("driver")).unwrap();
            let mut expected = vec![("driver".to_string(), implied)];
            expected.extend(flatten(&props, &mut NoFds).unwrap());
            prop_assert_eq!(parsed, expected);
        }

        #[test]
        fn json_round_trip(props in arb_props()) {
            let json = render_json("t", &props, &mut NoFds).unwrap();
            let text = serde_json::to_string(&json).unwrap();
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&back, &json);
            prop_assert!(same_properties(&props, &back), "{:?} vs {}", props, back);
        }

        #[test]
        fn parser_never_panics(input in "\\PC*", implied in proptest::option::of("[a-z]{1,5}")) {
            let _ = parse_options(&input, implied.as_deref());
        }
    }
}
