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
    let mut out = String::new();
    write_size(&mut out, bytes);
    out
}

/// Appends [`format_size`]'s text to `out`.
pub(crate) fn write_size(out: &mut String, bytes: u64) {
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
                push_uint(out, bytes >> shift);
                out.push(suffix);
                return;
            }
        }
    }
    push_uint(out, bytes);
}

/// Appends `n` in decimal (without the formatting machinery `write!` goes through: numbers
/// are a good part of every device's options).
fn push_uint(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        // `n % 10` is below 10: the cast cannot truncate.
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// Appends `n` in decimal.
fn push_int(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    push_uint(out, n.unsigned_abs());
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

/// Renders a scalar value as option-syntax text (unescaped); `None` for a map.
fn scalar_text(value: &Value<'_>, fds: &mut dyn FdResolver) -> Result<Option<String>> {
    Ok(Some(match value {
        Value::Bool(b) => if *b { "on" } else { "off" }.to_owned(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Size(s) => format_size(*s),
        Value::Str(s) => s.to_string(),
        Value::PciAddr(addr) => addr.to_string(),
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
    props: &Props<'_>,
    fds: &mut dyn FdResolver,
) -> Result<String> {
    let mut out = String::with_capacity(128);
    let implied = implied.map(|value| (what, value));
    write_options(&mut out, 0, what, implied, props.iter(), fds)?;
    Ok(out)
}

/// [`render_options`] appending to `out`: the implied value first when given (`(field,
/// value)`, a NUL in it reported under `field`), then `entries`, each property preceded by a
/// `,` unless nothing precedes it in `out` since `start`.
pub(crate) fn write_options<'v, 'p: 'v>(
    out: &mut String,
    start: usize,
    what: &str,
    implied: Option<(&str, &str)>,
    entries: impl Iterator<Item = (&'v str, &'v Value<'p>)>,
    fds: &mut dyn FdResolver,
) -> Result<()> {
    if let Some((field, value)) = implied {
        push_escaped_checked(out, what, field, value)?;
    }
    write_props(out, start, what, None, entries, fds)
}

/// Appends `text` with every `,` doubled, refusing a NUL byte (reported under `key`) in the
/// same pass.
fn push_escaped_checked(out: &mut String, what: &str, key: &str, text: &str) -> Result<()> {
    let mut rest = text;
    // Both bytes are ASCII, so every hit is a char boundary.
    while let Some(i) = find_comma_or_nul(rest.as_bytes()) {
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

/// The index of the first `,` or NUL byte in `bytes`. Eight bytes at a time: escaping was a
/// seventh of a 64-device render's instructions, most of them this scan over paths and ids
/// that hold neither byte. A text of eight bytes or more ends with one word overlapping the
/// last full one, so no byte is scanned alone.
fn find_comma_or_nul(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const COMMAS: u64 = u64::from_le_bytes([b','; 8]);
    // The high bit of each zero byte of `x`. Bits above the first zero byte may be wrong (a
    // borrow runs upwards), the lowest set bit never is; words are read little-endian, so
    // the lowest bit is the first byte on every host.
    let zeros = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    // The first `,` or NUL in the eight bytes at `at`, if any.
    let hit_in_word = |at: usize| -> Option<usize> {
        let word = bytes.get(at..at + 8)?;
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(word).ok()?);
        let hits = zeros(word) | zeros(word ^ COMMAS);
        // A bit index below 64 divided by 8: the cast cannot truncate.
        (hits != 0).then(|| at + (hits.trailing_zeros() / 8) as usize)
    };
    if bytes.len() < 8 {
        return bytes.iter().position(|&b| b == b',' || b == 0);
    }
    let last = bytes.len() - 8;
    let mut at = 0;
    while at < last {
        if let Some(i) = hit_in_word(at) {
            return Some(i);
        }
        at += 8;
    }
    // The last eight bytes: those before `at` hold no hit, so the first one found is right.
    hit_in_word(last)
}

/// Appends a scalar's option-syntax text, escaped, writing straight into `out`.
fn push_scalar(
    out: &mut String,
    what: &str,
    key: &str,
    value: &Value<'_>,
    fds: &mut dyn FdResolver,
) -> Result<()> {
    match value {
        Value::Bool(b) => out.push_str(if *b { "on" } else { "off" }),
        Value::Int(i) => push_int(out, *i),
        Value::UInt(u) => push_uint(out, *u),
        Value::Size(s) => write_size(out, *s),
        Value::Str(s) => push_escaped_checked(out, what, key, s)?,
        Value::PciAddr(addr) => {
            let _ = write!(out, "{addr}");
        }
        Value::Fd(fd) => push_escaped_checked(out, what, key, &fds.resolve(fd)?)?,
        Value::FdList(list) => push_escaped_checked(out, what, key, &fd_list(list, fds)?)?,
        Value::Map(_) => {}
    }
    Ok(())
}

/// The keys of the maps a nested property sits in, outermost first (`file.` of
/// `file.filename`), kept on the stack.
struct KeyPath<'p> {
    key: &'p str,
    parent: Option<&'p KeyPath<'p>>,
}

impl KeyPath<'_> {
    fn write(&self, out: &mut String) {
        if let Some(parent) = self.parent {
            parent.write(out);
        }
        out.push_str(self.key);
        out.push('.');
    }
}

/// Appends `entries` as `key=value` pairs, each after a `,` unless it is the first text since
/// `start`, nested keys prefixed by `path`.
fn write_props<'v, 'p: 'v>(
    out: &mut String,
    start: usize,
    what: &str,
    path: Option<&KeyPath<'_>>,
    entries: impl Iterator<Item = (&'v str, &'v Value<'p>)>,
    fds: &mut dyn FdResolver,
) -> Result<()> {
    for (key, value) in entries {
        match value {
            Value::Map(inner) => {
                let nested = KeyPath { key, parent: path };
                write_props(out, start, what, Some(&nested), inner.iter(), fds)?;
            }
            scalar => {
                if out.len() > start {
                    out.push(',');
                }
                if let Some(path) = path {
                    path.write(out);
                }
                out.push_str(key);
                out.push('=');
                push_scalar(out, what, key, scalar, fds)?;
            }
        }
    }
    Ok(())
}

/// Renders `props` as a JSON object, each value with its JSON type.
pub fn render_json(what: &str, props: &Props<'_>, fds: &mut dyn FdResolver) -> Result<Json> {
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
            Value::PciAddr(addr) => Json::String(addr.to_string()),
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
pub fn flatten(props: &Props<'_>, fds: &mut dyn FdResolver) -> Result<Vec<(String, String)>> {
    fn walk(
        prefix: &str,
        props: &Props<'_>,
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
    use crate::pci::PciAddr;
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

    /// Property names: keys are ours (literals), so a fixed pool of them, some nested.
    const KEYS: [&str; 12] = [
        "a",
        "b",
        "driver",
        "id",
        "file",
        "node-name",
        "x-y",
        "k_9",
        "cache",
        "size",
        "p.q",
        "z",
    ];

    fn arb_value() -> impl Strategy<Value = Value<'static>> {
        let text = "[^\u{0}]{0,24}";
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            any::<u64>().prop_map(Value::Size),
            text.prop_map(Value::from),
            // The characters the escaping exists for, often.
            "[,=\" ']{0,8}".prop_map(Value::from),
            (0u8..32, 0u8..8).prop_map(|(s, f)| Value::PciAddr(PciAddr::new(s, f).unwrap())),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| {
            proptest::collection::btree_map(prop::sample::select(&KEYS[..]), inner, 1..4)
                .prop_map(|kv| Value::from(kv.into_iter().collect::<Props>()))
        })
    }

    fn arb_props() -> impl Strategy<Value = Props<'static>> {
        proptest::collection::btree_map(prop::sample::select(&KEYS[..]), arb_value(), 0..12)
            .prop_map(|kv| kv.into_iter().collect())
    }

    /// Whether `json` holds exactly `props`, each value with its JSON type.
    fn same_properties(props: &Props<'_>, json: &serde_json::Value) -> bool {
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
                    Value::PciAddr(addr) => j.as_str() == Some(addr.to_string().as_str()),
                    Value::Map(inner) => same_properties(inner, j),
                    Value::Fd(_) | Value::FdList(_) => false,
                }
            })
    }

    #[test]
    fn integer_edges() {
        let mut out = String::new();
        for u in [0, 9, 10, u64::MAX] {
            push_uint(&mut out, u);
            out.push(' ');
        }
        for i in [0, -1, i64::MIN, i64::MAX] {
            push_int(&mut out, i);
            out.push(' ');
        }
        assert_eq!(
            out,
            format!("0 9 10 {} 0 -1 {} {} ", u64::MAX, i64::MIN, i64::MAX)
        );
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

        /// The word-at-a-time scan finds what a byte-at-a-time one finds, wherever the bytes
        /// fall relative to the eight-byte words.
        #[test]
        fn comma_or_nul_scan_matches_a_byte_scan(
            text in "[a,\u{0}\u{e9}\u{2c}\u{80}-\u{ff}]{0,40}",
            clean in "[a\u{e9}\u{ac}\u{80}-\u{ff}]{0,30}",
            hits in "[a,\u{0}]{0,3}",
        ) {
            // Texts mostly free of hits too (a hit lands anywhere in a long text, or none).
            let long = format!("{clean}{hits}{clean}");
            for text in [text.as_str(), long.as_str()] {
                let expected = text.bytes().position(|b| b == b',' || b == 0);
                prop_assert_eq!(find_comma_or_nul(text.as_bytes()), expected, "{:?}", text);
            }
        }

        #[test]
        fn integers_are_written_as_display_writes_them(u: u64, i: i64) {
            let mut out = String::new();
            push_uint(&mut out, u);
            out.push(' ');
            push_int(&mut out, i);
            prop_assert_eq!(out, format!("{u} {i}"));
        }

        #[test]
        fn parser_never_panics(input in "\\PC*", implied in proptest::option::of("[a-z]{1,5}")) {
            let _ = parse_options(&input, implied.as_deref());
        }
    }
}
