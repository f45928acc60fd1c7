//! Ordered, typed property lists: the common form of every QEMU option and QMP argument set.
//!
//! A property list borrows what it names (`Props<'a>`: ids, paths and descriptors stay in the
//! device they belong to) and keeps its first properties inline, so rendering a device to
//! arguments copies no field and allocates no list: the text goes straight into the argument.

use std::borrow::Cow;

use crate::fd::FdArg;
use crate::pci::PciAddr;

/// One property value, borrowing its text and descriptors for `'a`.
///
/// The type decides both renderings: in the option syntax booleans are `on`/`off`, sizes carry
/// a binary suffix when exact (`2G`), descriptors become numbers, nested maps become dotted
/// keys; in JSON each keeps its JSON type (a size is a byte count, a map an object).
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    /// A boolean: `on`/`off`, or JSON `true`/`false`.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A size in bytes: `512M` in the option syntax, a number in JSON.
    Size(u64),
    /// A string (commas doubled in the option syntax), usually borrowed.
    Str(Cow<'a, str>),
    /// A PCI address on a bus (`addr=02.1`), written as text in both syntaxes.
    PciAddr(PciAddr),
    /// A file descriptor, resolved at render time.
    Fd(&'a FdArg),
    /// A `:`-separated list of descriptors (`fds=3:4`).
    FdList(&'a [FdArg]),
    /// Nested properties (`file.driver=file` / `"file": {"driver": "file"}`).
    Map(Box<Props<'a>>),
}

impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl Value<'_> {
    /// A string literal.
    pub const fn literal(text: &'static str) -> Value<'static> {
        Value::Str(Cow::Borrowed(text))
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Str(Cow::Borrowed(v))
    }
}

impl From<String> for Value<'_> {
    fn from(v: String) -> Self {
        Value::Str(Cow::Owned(v))
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Str(Cow::Borrowed(v))
    }
}

macro_rules! value_from_uint {
    ($($t:ty),*) => {$(
        impl From<$t> for Value<'_> {
            fn from(v: $t) -> Self {
                Value::UInt(u64::from(v))
            }
        }
    )*};
}
value_from_uint!(u8, u16, u32, u64);

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<PciAddr> for Value<'_> {
    fn from(v: PciAddr) -> Self {
        Value::PciAddr(v)
    }
}

impl<'a> From<&'a FdArg> for Value<'a> {
    fn from(v: &'a FdArg) -> Self {
        Value::Fd(v)
    }
}

impl<'a> From<Props<'a>> for Value<'a> {
    fn from(v: Props<'a>) -> Self {
        Value::Map(Box::new(v))
    }
}

/// A property name: a literal, or borrowed from the configuration (machine options).
pub type Key<'a> = &'a str;

/// How many properties a list holds without allocating: enough for nearly every device.
const INLINE: usize = 8;

/// An ordered list of `key = value` properties.
///
/// Order is kept because it is what a reader of the command line sees, and tests compare it.
/// The first eight properties are stored inline; longer lists spill to the heap.
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
#[derive(Clone, Debug, Default)]
pub struct Props<'a> {
    head: [Option<(Key<'a>, Value<'a>)>; INLINE],
    head_len: usize,
    tail: Vec<(Key<'a>, Value<'a>)>,
}

impl<'a> Props<'a> {
    /// An empty list.
    #[inline]
    pub fn new() -> Self {
        Props::default()
    }

    /// Puts `key = value` first (for the implied key of an option, e.g. the driver).
    #[inline]
    pub fn prepend(mut self, key: Key<'a>, value: impl Into<Value<'a>>) -> Self {
        let mut carried = Some((key, value.into()));
        for slot in &mut self.head[..self.head_len] {
            carried = std::mem::replace(slot, carried);
        }
        match carried {
            Some(last) if self.head_len < INLINE => {
                self.head[self.head_len] = Some(last);
                self.head_len += 1;
            }
            Some(last) => self.tail.insert(0, last),
            None => {}
        }
        self
    }

    /// Appends `key = value`.
    #[inline]
    pub fn push(&mut self, key: Key<'a>, value: impl Into<Value<'a>>) -> &mut Self {
        let entry = (key, value.into());
        if self.head_len < INLINE {
            self.head[self.head_len] = Some(entry);
            self.head_len += 1;
        } else {
            self.tail.push(entry);
        }
        self
    }

    /// Appends `key = value` (builder form).
    #[inline]
    pub fn with(mut self, key: Key<'a>, value: impl Into<Value<'a>>) -> Self {
        self.push(key, value);
        self
    }

    /// A list whose first property is `key = value` (an option's implied key, such as a
    /// device's driver), to build on in place.
    ///
    /// The builder forms ([`with`](Self::with), [`opt`](Self::opt), …) move the list at each
    /// step; the in-place forms ([`push`](Self::push), [`push_opt`](Self::push_opt), …) do not,
    /// which counts where parts are built for every render.
    #[inline]
    pub fn starting_with(key: Key<'a>, value: impl Into<Value<'a>>) -> Self {
        let mut props = Props::new();
        props.push(key, value);
        props
    }

    /// Appends `key = value` when `value` is `Some`.
    #[inline]
    pub fn push_opt<V: Into<Value<'a>>>(&mut self, key: Key<'a>, value: Option<V>) -> &mut Self {
        if let Some(v) = value {
            self.push(key, v);
        }
        self
    }

    /// Appends `key = on` when `flag` is true (and nothing otherwise).
    #[inline]
    pub fn push_flag(&mut self, key: Key<'a>, flag: bool) -> &mut Self {
        self.push_opt(key, flag.then_some(true))
    }

    /// Appends a size in bytes when `Some`.
    #[inline]
    pub fn push_size(&mut self, key: Key<'a>, bytes: Option<u64>) -> &mut Self {
        self.push_opt(key, bytes.map(Value::Size))
    }

    /// Appends every property of `other` (a list, or any pairs).
    #[inline]
    pub fn append<V: Into<Value<'a>>>(
        &mut self,
        other: impl IntoIterator<Item = (Key<'a>, V)>,
    ) -> &mut Self {
        for (key, value) in other {
            self.push(key, value);
        }
        self
    }

    /// Appends `key = value` when `value` is `Some` (builder form).
    #[inline]
    pub fn opt<V: Into<Value<'a>>>(mut self, key: Key<'a>, value: Option<V>) -> Self {
        self.push_opt(key, value);
        self
    }

    /// Appends `key = on` when `flag` is true, and nothing otherwise (builder form).
    #[inline]
    pub fn flag(mut self, key: Key<'a>, flag: bool) -> Self {
        self.push_flag(key, flag);
        self
    }

    /// Appends a size in bytes (builder form).
    #[inline]
    pub fn size(mut self, key: Key<'a>, bytes: u64) -> Self {
        self.push(key, Value::Size(bytes));
        self
    }

    /// Appends a size in bytes when `Some` (builder form).
    #[inline]
    pub fn opt_size(mut self, key: Key<'a>, bytes: Option<u64>) -> Self {
        self.push_size(key, bytes);
        self
    }

    /// Appends every property of `other`, a list or any pairs (builder form).
    #[inline]
    pub fn extend<V: Into<Value<'a>>>(
        mut self,
        other: impl IntoIterator<Item = (Key<'a>, V)>,
    ) -> Self {
        self.append(other);
        self
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.entries().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The string value of `key`, if present and a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The properties in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value<'a>)> {
        self.entries().map(|(k, v)| (*k, v))
    }

    fn entries(&self) -> impl Iterator<Item = &(Key<'a>, Value<'a>)> {
        self.head[..self.head_len]
            .iter()
            .flatten()
            .chain(self.tail.iter())
    }

    /// The number of properties.
    pub fn len(&self) -> usize {
        self.head_len + self.tail.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for Props<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.entries().eq(other.entries())
    }
}

impl<'a> IntoIterator for Props<'a> {
    type Item = (Key<'a>, Value<'a>);
    type IntoIter = std::iter::Chain<
        std::iter::Flatten<std::array::IntoIter<Option<(Key<'a>, Value<'a>)>, INLINE>>,
        std::vec::IntoIter<(Key<'a>, Value<'a>)>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.head.into_iter().flatten().chain(self.tail)
    }
}

impl<'a, V: Into<Value<'a>>> FromIterator<(Key<'a>, V)> for Props<'a> {
    fn from_iter<I: IntoIterator<Item = (Key<'a>, V)>>(iter: I) -> Self {
        let mut props = Props::new();
        for (key, value) in iter {
            props.push(key, value);
        }
        props
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Pushes, prepends and extensions keep their order across the inline and heap parts.
        #[test]
        fn order_is_kept_inline_and_spilled(
            pushed in 0usize..20,
            prepended in 0usize..4,
            extended in 0usize..12,
        ) {
            let keys: Vec<String> = (0..pushed + prepended + extended).map(|i| format!("k{i}")).collect();
            let mut props = Props::new();
            let mut expected: Vec<(&str, Value)> = Vec::new();
            for key in &keys[..pushed] {
                props.push(key, key.as_str());
                expected.push((key, Value::from(key.as_str())));
            }
            for key in &keys[pushed..pushed + prepended] {
                props = props.prepend(key, 7u8);
                expected.insert(0, (key, Value::UInt(7)));
            }
            let more: Props = keys[pushed + prepended..].iter().map(|k| (k.as_str(), true)).collect();
            expected.extend(keys[pushed + prepended..].iter().map(|k| (k.as_str(), Value::Bool(true))));
            props = props.extend(more);
            prop_assert_eq!(props.len(), expected.len());
            let listed: Vec<(&str, Value)> = props.iter().map(|(k, v)| (k, v.clone())).collect();
            prop_assert_eq!(&listed, &expected);
            let owned: Vec<(&str, Value)> = props.clone().into_iter().collect();
            prop_assert_eq!(&owned, &expected);
            let rebuilt: Props = expected.iter().cloned().collect();
            prop_assert_eq!(&rebuilt, &props);
            for (key, value) in &expected {
                prop_assert_eq!(props.get(key), Some(value));
            }
        }
    }
}
