//! [`Argv`]: a rendered command line held in one buffer.
//!
//! A 64-device VM has about 280 arguments. As a `Vec<String>` that is 280 allocations (and
//! 280 frees) for text the launcher only reads once, to hand it to `exec`. An `Argv` keeps
//! every argument back to back in one `String` with the end offset of each, so rendering
//! allocates two growing buffers, and the launcher passes `argv.iter()` straight to
//! [`std::process::Command::args`]. [`Argv::into_vec`] gives the `Vec<String>` form.

use std::fmt;
use std::iter::FusedIterator;
use std::ops::Index;

/// A list of command-line arguments stored in one buffer.
///
/// ```
/// use hvarch_devices::argv::Argv;
/// let mut argv = Argv::new();
/// argv.push("-device");
/// argv.push("virtio-blk-pci,drive=d0");
/// assert_eq!(argv.len(), 2);
/// assert_eq!(&argv[1], "virtio-blk-pci,drive=d0");
/// assert_eq!(argv.iter().collect::<Vec<_>>(), ["-device", "virtio-blk-pci,drive=d0"]);
/// let command = std::process::Command::new("qemu-system-aarch64").args(&argv).get_args().count();
/// assert_eq!(command, 2);
/// assert_eq!(argv.into_vec(), ["-device", "virtio-blk-pci,drive=d0"]);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Argv {
    /// Every argument, back to back.
    text: String,
    /// Where each argument ends in `text` (it starts where the previous one ends).
    ends: Vec<usize>,
}

impl Argv {
    /// An empty list.
    pub fn new() -> Self {
        Argv::default()
    }

    /// An empty list with room for `args` arguments totalling `bytes` bytes.
    pub fn with_capacity(args: usize, bytes: usize) -> Self {
        Argv {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(args),
        }
    }

    /// The number of arguments.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no argument.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The argument at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&str> {
        let end = *self.ends.get(index)?;
        let start = index.checked_sub(1).map_or(0, |prev| self.ends[prev]);
        self.text.get(start..end)
    }

    /// Appends one argument.
    pub fn push(&mut self, arg: &str) {
        self.text.push_str(arg);
        self.ends.push(self.text.len());
    }

    /// Appends one argument written by `write`. If `write` fails, what it wrote is taken back
    /// and the list is as it was. (Crate-only: `write` sees the whole buffer and must only
    /// append to it.)
    pub(crate) fn push_with<E>(
        &mut self,
        write: impl FnOnce(&mut String) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.text.len();
        match write(&mut self.text) {
            Ok(()) => {
                self.ends.push(self.text.len());
                Ok(())
            }
            Err(e) => {
                self.text.truncate(start);
                Err(e)
            }
        }
    }

    /// The arguments in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            argv: self,
            front: 0,
            back: self.ends.len(),
        }
    }

    /// The arguments as one `String` each.
    pub fn into_vec(self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

impl Index<usize> for Argv {
    type Output = str;

    /// The argument at `index`.
    ///
    /// # Panics
    ///
    /// If `index` is out of bounds, as slices do.
    fn index(&self, index: usize) -> &str {
        match self.get(index) {
            Some(arg) => arg,
            None => panic!(
                "argument index {index} out of range for an argv of {} arguments",
                self.len()
            ),
        }
    }
}

impl fmt::Debug for Argv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl From<Argv> for Vec<String> {
    fn from(argv: Argv) -> Self {
        argv.into_vec()
    }
}

impl<S: AsRef<str>> Extend<S> for Argv {
    fn extend<I: IntoIterator<Item = S>>(&mut self, args: I) {
        for arg in args {
            self.push(arg.as_ref());
        }
    }
}

impl<S: AsRef<str>> FromIterator<S> for Argv {
    fn from_iter<I: IntoIterator<Item = S>>(args: I) -> Self {
        let mut argv = Argv::new();
        argv.extend(args);
        argv
    }
}

impl<'a> IntoIterator for &'a Argv {
    type Item = &'a str;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<S: AsRef<str>> PartialEq<[S]> for Argv {
    fn eq(&self, other: &[S]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for Argv {
    fn eq(&self, other: &[S; N]) -> bool {
        *self == other[..]
    }
}

/// The arguments of an [`Argv`], in order ([`Argv::iter`]).
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    argv: &'a Argv,
    /// The next index from the front.
    front: usize,
    /// One past the next index from the back.
    back: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.front == self.back {
            return None;
        }
        let arg = self.argv.get(self.front);
        self.front += 1;
        arg
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.back - self.front;
        (n, Some(n))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.front == self.back {
            return None;
        }
        self.back -= 1;
        self.argv.get(self.back)
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl FusedIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_arguments_are_arguments() {
        let argv: Argv = ["", "-S", ""].into_iter().collect();
        assert_eq!(argv.len(), 3);
        assert_eq!(argv, ["", "-S", ""]);
        assert_eq!(argv.get(3), None);
    }

    #[test]
    fn a_failed_write_leaves_the_list_as_it_was() {
        let mut argv = Argv::new();
        argv.push("-device");
        let failed: Result<(), &str> = argv.push_with(|out| {
            out.push_str("half,written");
            Err("refused")
        });
        assert_eq!(failed, Err("refused"));
        assert_eq!(argv, ["-device"]);
        argv.push_with::<()>(|out| {
            out.push_str("virtio-rng-pci");
            Ok(())
        })
        .unwrap();
        assert_eq!(argv, ["-device", "virtio-rng-pci"]);
    }

    #[test]
    fn debug_shows_the_arguments_as_a_list() {
        let argv: Argv = ["-m", "2G"].into_iter().collect();
        assert_eq!(format!("{argv:?}"), r#"["-m", "2G"]"#);
    }

    #[test]
    #[should_panic(expected = "argument index 2 out of range for an argv of 2 arguments")]
    fn indexing_past_the_end_panics_naming_the_index() {
        let argv: Argv = ["-m", "2G"].into_iter().collect();
        let _ = &argv[2];
    }

    proptest! {
        /// Whatever goes in comes out: the same arguments, in order, from the front, from the
        /// back and by index.
        #[test]
        fn holds_what_a_vec_of_strings_holds(args in proptest::collection::vec(".{0,12}", 0..20)) {
            let argv: Argv = args.iter().collect();
            prop_assert_eq!(argv.len(), args.len());
            prop_assert_eq!(argv.iter().len(), args.len());
            prop_assert!(argv == args[..]);
            let backwards: Vec<&str> = argv.iter().rev().collect();
            let expected: Vec<&str> = args.iter().rev().map(String::as_str).collect();
            prop_assert_eq!(backwards, expected);
            for (i, arg) in args.iter().enumerate() {
                prop_assert_eq!(&argv[i], arg.as_str());
            }
            prop_assert_eq!(argv.into_vec(), args);
        }
    }
}
