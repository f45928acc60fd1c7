//! Ordered, typed property lists: the common form of every QEMU option and QMP argument set.

use std::borrow::Cow;

use crate::fd::FdArg;

/// One property value.
///
/// The type decides both renderings: in the option syntax booleans are `on`/`off`, sizes carry
/// a binary suffix when exact (`2G`), descriptors become numbers, nested maps become dotted
/// keys; in JSON each keeps its JSON type (a size is a byte count, a map an object).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A boolean: `on`/`off`, or JSON `true`/`false`.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A size in bytes: `512M` in the option syntax, a number in JSON.
    Size(u64),
    /// A string (commas doubled in the option syntax); borrowed when it is a literal.
    Str(Cow<'static, str>),
    /// A file descriptor, resolved at render time.
    Fd(FdArg),
    /// A `:`-separated list of descriptors (`fds=3:4`).
    FdList(Vec<FdArg>),
    /// Nested properties (`file.driver=file` / `"file": {"driver": "file"}`).
    Map(Props),
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl Value {
    /// A string literal, stored without copying.
    pub const fn literal(text: &'static str) -> Value {
        Value::Str(Cow::Borrowed(text))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(Cow::Owned(v.to_owned()))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(Cow::Owned(v))
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Str(Cow::Owned(v.clone()))
    }
}

macro_rules! value_from_uint {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::UInt(u64::from(v))
            }
        }
    )*};
}
value_from_uint!(u8, u16, u32, u64);

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<FdArg> for Value {
    fn from(v: FdArg) -> Self {
        Value::Fd(v)
    }
}

impl From<Props> for Value {
    fn from(v: Props) -> Self {
        Value::Map(v)
    }
}

/// An ordered list of `key = value` properties.
///
/// Order is kept because it is what a reader of the command line sees, and tests compare it.
///
/// ```
/// use hvarch_devices::props::Props;
/// let props = Props::new()
///     .with("driver", "virtio-blk-pci")
///     .with("drive", "disk0")
///     .with("share-rw", true)
///     .opt("serial", None::<&str>);
/// assert_eq!(props.len(), 3);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Props(Vec<(Key, Value)>);

/// A property name: usually a `&'static str` literal, so building a list does not allocate.
pub type Key = Cow<'static, str>;

impl Props {
    /// An empty list (with room for a typical device's properties, so building one rarely
    /// reallocates).
    pub fn new() -> Self {
        Props(Vec::with_capacity(8))
    }

    /// Puts `key = value` first (for the implied key of an option, e.g. the driver).
    pub fn prepend(mut self, key: impl Into<Key>, value: impl Into<Value>) -> Self {
        self.0.insert(0, (key.into(), value.into()));
        self
    }

    /// Appends `key = value`.
    pub fn push(&mut self, key: impl Into<Key>, value: impl Into<Value>) -> &mut Self {
        self.0.push((key.into(), value.into()));
        self
    }

    /// Appends `key = value` (builder form).
    pub fn with(mut self, key: impl Into<Key>, value: impl Into<Value>) -> Self {
        self.push(key, value);
        self
    }

    /// Appends `key = value` when `value` is `Some`.
    pub fn opt<V: Into<Value>>(mut self, key: impl Into<Key>, value: Option<V>) -> Self {
        if let Some(v) = value {
            self.push(key, v);
        }
        self
    }

    /// Appends `key = on` when `flag` is true (and nothing otherwise).
    pub fn flag(self, key: impl Into<Key>, flag: bool) -> Self {
        self.opt(key, flag.then_some(true))
    }

    /// Appends a size in bytes.
    pub fn size(mut self, key: impl Into<Key>, bytes: u64) -> Self {
        self.push(key, Value::Size(bytes));
        self
    }

    /// Appends a size in bytes when `Some`.
    pub fn opt_size(self, key: impl Into<Key>, bytes: Option<u64>) -> Self {
        match bytes {
            Some(b) => self.size(key, b),
            None => self,
        }
    }

    /// Appends every property of `other`.
    pub fn extend(mut self, other: Props) -> Self {
        if self.0.is_empty() {
            return other;
        }
        self.0.extend(other.0);
        self
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The string value of `key`, if present and a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The properties in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// The number of properties.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for Props {
    type Item = (Key, Value);
    type IntoIter = std::vec::IntoIter<(Key, Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<K: Into<Key>, V: Into<Value>> FromIterator<(K, V)> for Props {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Props(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}
