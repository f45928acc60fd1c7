//! Reading a TOML table the way Kata's Go runtime decodes it (BurntSushi `toml` into typed
//! struct fields), keeping each key's line: every value is checked against its key's type
//! before anything reads it, so a type error names the key, the line and the type expected.

use std::collections::BTreeMap;

use toml::Spanned;

use super::error::{KataError, KataWarning, WarningKind};

/// A table as parsed, each key and value with its byte span in the file.
pub(crate) type RawTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// The type a key's value must have (the Go field's type in Kata's `hypervisor` struct).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Type {
    /// `string`.
    Str,
    /// `bool`.
    Bool,
    /// `uint32`.
    U32,
    /// `uint64`.
    U64,
    /// `int64`.
    I64,
    /// `float32` (Kata 3.x's `default_vcpus`; an integer is accepted too).
    Number,
    /// `[]string`.
    StrList,
}

impl Type {
    /// What a value of this type is, for error messages.
    pub(crate) fn expected(self) -> &'static str {
        match self {
            Type::Str => "a string",
            Type::Bool => "a boolean",
            Type::U32 => "an integer from 0 to 4294967295",
            Type::U64 => "a non-negative integer",
            Type::I64 => "an integer",
            Type::Number => "a number",
            Type::StrList => "an array of strings",
        }
    }
}

/// A value that has passed its type check.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Bool(bool),
    /// Any integer type (ranges already checked).
    Int(i64),
    /// A float (only for [`Type::Number`]).
    Float(f64),
    StrList(Vec<String>),
}

impl Value {
    /// Whether this is what Kata gets when the key is absent (Go's zero value): `""`,
    /// `false`, `0`, `[]`.
    pub(crate) fn is_zero(&self) -> bool {
        match self {
            Value::Str(s) => s.is_empty(),
            Value::Bool(b) => !b,
            Value::Int(i) => *i == 0,
            Value::Float(f) => *f == 0.0,
            Value::StrList(l) => l.is_empty(),
        }
    }
}

/// A checked key: its value and the line it is on.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub(crate) value: Value,
    pub(crate) line: usize,
}

/// What to do with a key the catalogue does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unknown {
    /// An error (with "did you mean").
    Error,
    /// A warning (the `lenient` option).
    Warn,
    /// Nothing: tables hvarch reads only a few keys of.
    Ignore,
}

/// A table whose known keys all passed their type checks.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    /// The table's name, `hypervisor.qemu`.
    table: String,
    entries: BTreeMap<String, Entry>,
}

impl Checked {
    /// Checks every key of `raw` (a table of `text`, named `table`) against `types` (key name
    /// and type); a key not in `types` is handled as `unknown` says.
    pub(crate) fn new(
        text: &str,
        table: &str,
        raw: &RawTable,
        types: &[(&'static str, Type)],
        unknown: Unknown,
        warnings: &mut Vec<KataWarning>,
    ) -> Result<Checked, KataError> {
        let mut entries = BTreeMap::new();
        for (key, value) in raw {
            let name = key.get_ref();
            let line = line_of(text, key.span().start);
            let Some(&(_, ty)) = types.iter().find(|(known, _)| known == name) else {
                let suggestion = did_you_mean(name, types.iter().map(|(k, _)| *k));
                match unknown {
                    Unknown::Error => {
                        return Err(KataError::UnknownKey {
                            key: format!("{table}.{name}"),
                            line,
                            suggestion,
                        })
                    }
                    Unknown::Warn => warnings.push(KataWarning {
                        key: format!("{table}.{name}"),
                        line: Some(line),
                        kind: WarningKind::UnknownKey { suggestion },
                    }),
                    Unknown::Ignore => {}
                }
                continue;
            };
            let value = check(ty, value.get_ref()).map_err(|found| KataError::Type {
                key: format!("{table}.{name}"),
                line,
                expected: ty.expected(),
                found,
            })?;
            entries.insert(name.clone(), Entry { value, line });
        }
        Ok(Checked {
            table: table.to_owned(),
            entries,
        })
    }

    /// The full name of `key`, `hypervisor.qemu.<key>`.
    pub(crate) fn full(&self, key: &str) -> String {
        format!("{}.{key}", self.table)
    }

    /// The entry of `key`, if the file sets it.
    pub(crate) fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// The line of `key`, if the file sets it.
    pub(crate) fn line(&self, key: &str) -> Option<usize> {
        self.entry(key).map(|e| e.line)
    }

    /// The string `key`, `""` when absent.
    pub(crate) fn str(&self, key: &str) -> &str {
        match self.entry(key).map(|e| &e.value) {
            Some(Value::Str(s)) => s,
            _ => "",
        }
    }

    /// The string `key`, `None` when absent or empty (Kata treats both alike).
    pub(crate) fn non_empty(&self, key: &str) -> Option<&str> {
        Some(self.str(key)).filter(|s| !s.is_empty())
    }

    /// The boolean `key`, `false` when absent.
    pub(crate) fn bool(&self, key: &str) -> bool {
        matches!(self.entry(key).map(|e| &e.value), Some(Value::Bool(true)))
    }

    /// The integer `key`, `0` when absent.
    pub(crate) fn int(&self, key: &str) -> i64 {
        match self.entry(key).map(|e| &e.value) {
            Some(Value::Int(i)) => *i,
            _ => 0,
        }
    }

    /// The number `key` as a float, `0` when absent.
    pub(crate) fn number(&self, key: &str) -> f64 {
        match self.entry(key).map(|e| &e.value) {
            Some(Value::Int(i)) => *i as f64,
            Some(Value::Float(f)) => *f,
            _ => 0.0,
        }
    }

    /// The string list `key`, empty when absent.
    pub(crate) fn list(&self, key: &str) -> &[String] {
        match self.entry(key).map(|e| &e.value) {
            Some(Value::StrList(l)) => l,
            _ => &[],
        }
    }

    /// Whether `key` is set to something other than Go's zero value.
    pub(crate) fn is_set(&self, key: &str) -> bool {
        self.entry(key).is_some_and(|e| !e.value.is_zero())
    }

    /// An [`KataError::Invalid`] for `key`'s value.
    pub(crate) fn invalid(
        &self,
        key: &str,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> KataError {
        KataError::Invalid {
            key: self.full(key),
            line: self.line(key),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// A warning about `key`.
    pub(crate) fn warning(&self, key: &str, kind: WarningKind) -> KataWarning {
        KataWarning {
            key: self.full(key),
            line: self.line(key),
            kind,
        }
    }
}

/// The 1-based line of byte `offset` of `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// `value` as `ty`, or a description of what it is instead.
fn check(ty: Type, value: &toml::Value) -> Result<Value, String> {
    let range = |min: i64, max: i64| -> Result<Value, String> {
        match value {
            toml::Value::Integer(i) if (min..=max).contains(i) => Ok(Value::Int(*i)),
            other => Err(describe(other)),
        }
    };
    match ty {
        Type::Str => match value {
            toml::Value::String(s) => Ok(Value::Str(s.clone())),
            other => Err(describe(other)),
        },
        Type::Bool => match value {
            toml::Value::Boolean(b) => Ok(Value::Bool(*b)),
            other => Err(describe(other)),
        },
        Type::U32 => range(0, i64::from(u32::MAX)),
        Type::U64 => range(0, i64::MAX),
        Type::I64 => range(i64::MIN, i64::MAX),
        Type::Number => match value {
            toml::Value::Integer(i) => Ok(Value::Int(*i)),
            toml::Value::Float(f) => Ok(Value::Float(*f)),
            other => Err(describe(other)),
        },
        Type::StrList => match value {
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(format!("an array holding {}", describe(other))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::StrList),
            other => Err(describe(other)),
        },
    }
}

/// What a TOML value is, with the value where it is short.
fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) if s.chars().count() <= 40 => format!("the string {s:?}"),
        toml::Value::String(_) => "a string".into(),
        toml::Value::Integer(i) => format!("the integer {i}"),
        toml::Value::Float(f) => format!("the float {f}"),
        toml::Value::Boolean(b) => format!("the boolean {b}"),
        toml::Value::Datetime(d) => format!("the datetime {d}"),
        toml::Value::Array(_) => "an array".into(),
        toml::Value::Table(_) => "a table".into(),
    }
}

/// The known key closest to `key`, if it is close enough to be a typo: at most two edits
/// (three for keys of more than 10 characters).
pub(crate) fn did_you_mean<'a>(key: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = if key.chars().count() > 10 { 3 } else { 2 };
    known
        .map(|k| (edit_distance(key, k), k))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, k)| (d, k))
        .map(|(_, k)| k)
}

/// Levenshtein distance over characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Whether `path` matches `pattern` the way Go's `filepath.Match` does: `*` is any run of
/// characters other than `/`, `?` one such character, `[…]` a class (`[^…]` negated, `a-z`
/// ranges), `\` escapes the next character. A malformed pattern matches nothing.
pub(crate) fn glob_match(pattern: &str, path: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let path: Vec<char> = path.chars().collect();
    matches_from(&pattern, &path).unwrap_or(false)
}

/// `None` for a malformed pattern.
fn matches_from(pattern: &[char], path: &[char]) -> Option<bool> {
    match pattern.first() {
        None => Some(path.is_empty()),
        Some('*') => {
            // Try every split that keeps `/` out of the star's run.
            let rest = &pattern[1..];
            let mut i = 0;
            loop {
                if matches_from(rest, &path[i..])? {
                    return Some(true);
                }
                if i == path.len() || path[i] == '/' {
                    return Some(false);
                }
                i += 1;
            }
        }
        Some('?') => match path.first() {
            Some(&c) if c != '/' => matches_from(&pattern[1..], &path[1..]),
            _ => Some(false),
        },
        Some('[') => {
            let (class_len, hit) = match path.first() {
                Some(&c) if c != '/' => class(&pattern[1..], c)?,
                // Still check the class is well formed.
                _ => {
                    class(&pattern[1..], '\0')?;
                    return Some(false);
                }
            };
            if hit {
                matches_from(&pattern[1 + class_len..], &path[1..])
            } else {
                Some(false)
            }
        }
        Some('\\') => {
            let &literal = pattern.get(1)?;
            match path.first() {
                Some(&c) if c == literal => matches_from(&pattern[2..], &path[1..]),
                _ => Some(false),
            }
        }
        Some(&literal) => match path.first() {
            Some(&c) if c == literal => matches_from(&pattern[1..], &path[1..]),
            _ => Some(false),
        },
    }
}

/// Matches `c` against the class starting after `[`; returns the class's length in
/// `pattern` (through `]`) and whether `c` is in it. `None` if malformed.
fn class(pattern: &[char], c: char) -> Option<(usize, bool)> {
    let mut i = 0;
    let negated = pattern.first() == Some(&'^');
    if negated {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let &ch = pattern.get(i)?;
        if ch == ']' && !first {
            return Some((i + 1, hit != negated));
        }
        first = false;
        let lo = if ch == '\\' {
            i += 1;
            *pattern.get(i)?
        } else {
            ch
        };
        i += 1;
        let hi = if pattern.get(i) == Some(&'-') && pattern.get(i + 1).is_some_and(|&n| n != ']') {
            i += 1;
            let mut hi = *pattern.get(i)?;
            if hi == '\\' {
                i += 1;
                hi = *pattern.get(i)?;
            }
            i += 1;
            hi
        } else {
            lo
        };
        if lo > hi {
            return None;
        }
        if (lo..=hi).contains(&c) {
            hit = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lines_are_one_based() {
        let text = "a\nb\n\nc";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 2), 2);
        assert_eq!(line_of(text, 5), 4);
        assert_eq!(line_of(text, 999), 4);
    }

    #[test]
    fn types_accept_and_refuse() {
        let v = |s: &str| -> toml::Value {
            toml::from_str::<toml::Table>(&format!("x = {s}")).unwrap()["x"].clone()
        };
        assert_eq!(check(Type::Str, &v("\"a\"")), Ok(Value::Str("a".into())));
        assert_eq!(check(Type::Str, &v("1")), Err("the integer 1".into()));
        assert_eq!(check(Type::Bool, &v("true")), Ok(Value::Bool(true)));
        assert_eq!(
            check(Type::Bool, &v("\"true\"")),
            Err("the string \"true\"".into())
        );
        assert_eq!(
            check(Type::U32, &v("4294967295")),
            Ok(Value::Int(4294967295))
        );
        assert_eq!(
            check(Type::U32, &v("4294967296")),
            Err("the integer 4294967296".into())
        );
        assert_eq!(check(Type::U32, &v("-1")), Err("the integer -1".into()));
        assert_eq!(check(Type::U64, &v("-1")), Err("the integer -1".into()));
        assert_eq!(check(Type::I64, &v("-1")), Ok(Value::Int(-1)));
        assert_eq!(check(Type::Number, &v("1.5")), Ok(Value::Float(1.5)));
        assert_eq!(check(Type::Number, &v("-2")), Ok(Value::Int(-2)));
        assert_eq!(
            check(Type::Number, &v("\"2\"")),
            Err("the string \"2\"".into())
        );
        assert_eq!(
            check(Type::StrList, &v("[\"a\", \"b\"]")),
            Ok(Value::StrList(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            check(Type::StrList, &v("[\"a\", 1]")),
            Err("an array holding the integer 1".into())
        );
        assert_eq!(
            check(Type::StrList, &v("\"a\"")),
            Err("the string \"a\"".into())
        );
        assert_eq!(check(Type::Str, &v("{ a = 1 }")), Err("a table".into()));
        assert_eq!(
            check(Type::Str, &v("1979-05-27")),
            Err("the datetime 1979-05-27".into())
        );
    }

    #[test]
    fn suggestions_for_near_misses_only() {
        let known = ["default_vcpus", "default_maxvcpus", "kernel", "initrd"];
        let dym = |k: &str| did_you_mean(k, known.iter().copied());
        assert_eq!(dym("default_vcpu"), Some("default_vcpus"));
        assert_eq!(dym("default_max_vcpus"), Some("default_maxvcpus"));
        assert_eq!(dym("kernal"), Some("kernel"));
        assert_eq!(dym("initrd_path"), None);
        assert_eq!(dym("totally_else"), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn globs_like_go_filepath_match() {
        for (pattern, path, hit) in [
            (
                "/usr/bin/qemu-system-aarch64",
                "/usr/bin/qemu-system-aarch64",
                true,
            ),
            (
                "/usr/bin/qemu-system-*",
                "/usr/bin/qemu-system-x86_64",
                true,
            ),
            ("/usr/bin/*", "/usr/bin/sub/qemu", false),
            ("/usr/*/qemu", "/usr/bin/qemu", true),
            (
                "/opt/kata/bin/qemu-system-?86_64",
                "/opt/kata/bin/qemu-system-x86_64",
                true,
            ),
            ("/bin/qemu[0-9]", "/bin/qemu7", true),
            ("/bin/qemu[^0-9]", "/bin/qemu7", false),
            ("/bin/qemu[^0-9]", "/bin/qemux", true),
            ("/bin/a\\*", "/bin/a*", true),
            ("/bin/a\\*", "/bin/ab", false),
            ("/bin/[", "/bin/[", false),
            ("/bin/[z-a]", "/bin/b", false),
            ("", "", true),
            ("*", "", true),
        ] {
            assert_eq!(glob_match(pattern, path), hit, "{pattern} vs {path}");
        }
    }

    proptest! {
        #[test]
        fn a_literal_pattern_matches_itself_only(
            path in "(/[a-z0-9._-]{1,8}){1,4}",
            other in "(/[a-z0-9._-]{1,8}){1,4}",
        ) {
            prop_assert!(glob_match(&path, &path));
            prop_assert_eq!(glob_match(&path, &other), path == other);
        }

        #[test]
        fn star_never_crosses_a_slash(dir in "/[a-z]{1,6}", rest in "[a-z/]{0,12}") {
            let path = format!("{dir}/{rest}");
            prop_assert_eq!(glob_match(&format!("{dir}/*"), &path), !rest.contains('/'));
        }

        #[test]
        fn arbitrary_patterns_never_panic(pattern in "[a-c*?\\[\\]^\\\\/-]{0,12}", path in "[a-c/]{0,8}") {
            let _ = glob_match(&pattern, &path);
        }
    }
}
