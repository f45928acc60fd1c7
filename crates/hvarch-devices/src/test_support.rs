//! Helpers shared by the device modules' unit tests (compiled for tests only).
//!
//! - proptest strategies for the text a spec file may put in a field: [`text`], [`ident`],
//!   and the patterns [`FIELD_TEXT`] and [`ID_TEXT`];
//! - [`args`] / [`args_with`]: a device's command-line arguments in option syntax, what the
//!   reference cases compare with, and [`qmp_adds`], its hot-plug commands;
//! - [`check_round_trip`]: the property every device's `parts()` must hold, that each part's
//!   option syntax parses back to exactly its properties.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::device::QemuDevice;
use crate::fd::{FdResolver, NoFds};
use crate::part::{Part, PartKind, QmpCall, Syntax};
use crate::props::Props;
use crate::syntax::{flatten, parse_options};

/// Field text: arbitrary text without NUL (up to 24 characters), text rich in the characters
/// option syntax must escape or keep (`,` `=` space, quotes, `é`, `/`), and identifier-like
/// words, each a third of the time.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\u{0}]{0,24}",
        "[a-z,= \"'é/]{0,12}",
        "[a-z][a-z0-9.-]{0,8}",
    ]
}

/// Mostly valid identifiers (three times in four), sometimes arbitrary [`text`].
pub fn ident() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-z][a-z0-9._-]{0,8}", 1 => text()]
}

/// A shorter field-text pattern, used as a strategy (`id in FIELD_TEXT`): arbitrary text
/// without NUL (up to 12 characters), a short lower-case word, or only `,` `=` space, quotes
/// and `é`.
pub const FIELD_TEXT: &str = "[^\u{0}]{0,12}|[a-z][a-z0-9]{0,6}|[,= \"'é]{0,6}";

/// An identifier pattern, used as a strategy (`id in ID_TEXT`): a valid QEMU id, printable
/// text (up to 12 characters), or an id-like word holding `,` `=` space, quotes or `é`.
pub const ID_TEXT: &str = "[a-z][a-z0-9_.-]{0,8}|\\PC{0,12}|[a-z][a-z0-9,= \'\"é]{0,8}";

/// The command-line arguments of `device`'s parts in option syntax, in order
/// (`["-chardev", "socket,…", "-device", "virtserialport,…"]`). Panics if the device does
/// not render.
pub fn args(device: &dyn QemuDevice) -> Vec<String> {
    args_with(device, &mut NoFds)
}

/// [`args`] with the descriptors resolved by `fds` (e.g. an [`crate::fd::FdTable`]).
pub fn args_with(device: &dyn QemuDevice, fds: &mut dyn FdResolver) -> Vec<String> {
    device
        .parts()
        .unwrap()
        .iter()
        .flat_map(|p| p.to_args(Syntax::Options, fds).unwrap())
        .collect()
}

/// The QMP commands that hot-plug `device`, one per part in creation order. Panics if the
/// device does not render.
pub fn qmp_adds(device: &dyn QemuDevice) -> Vec<QmpCall> {
    device
        .parts()
        .unwrap()
        .iter()
        .map(|p| p.qmp_add(&mut NoFds).unwrap())
        .collect()
}

/// Checks that every part renders in option syntax and that [`parse_options`] reads the
/// rendering back as exactly the part's properties: the implied value first (a part whose
/// kind has an implied key must have that value), then [`flatten`] of the other properties,
/// in order. A `-serial` part must render as `chardev:<its chardev>`.
pub fn check_round_trip(parts: &[Part]) -> Result<(), TestCaseError> {
    for part in parts {
        let rendered = part
            .render(Syntax::Options, &mut NoFds)
            .map_err(|e| TestCaseError::fail(format!("{part:?} does not render: {e}")))?;
        if part.kind() == PartKind::Serial {
            let chardev = part.props().get_str("chardev");
            prop_assert!(chardev.is_some(), "{:?} has no chardev", part);
            prop_assert_eq!(rendered, format!("chardev:{}", chardev.unwrap_or_default()));
            continue;
        }
        let key = part.kind().implied_key();
        let parsed = parse_options(&rendered, key).map_err(|e| {
            TestCaseError::fail(format!("{rendered:?} (of {part:?}) does not parse: {e}"))
        })?;
        let mut expected = Vec::new();
        if let Some(key) = key {
            let Some(implied) = part.implied() else {
                return Err(TestCaseError::fail(format!(
                    "{part:?} has no value for its implied key {key:?}"
                )));
            };
            expected.push((key.to_owned(), implied.to_owned()));
        }
        let rest: Props = part
            .props()
            .iter()
            .filter(|(k, _)| Some(*k) != key)
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect();
        expected.extend(flatten(&rest, &mut NoFds).unwrap());
        prop_assert_eq!(parsed, expected, "rendered as {:?}", rendered);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(props: Props) -> Part {
        Part::new(PartKind::Device, props)
    }

    #[test]
    fn accepts_faithful_renderings() {
        let parts = [
            Part::device(
                "virtio-blk-pci",
                Props::new().with("id", "d0").with("serial", "a,b=c"),
            ),
            Part::new(
                PartKind::Blockdev,
                Props::new()
                    .with("driver", "raw")
                    .with("node-name", "n0")
                    .with("file", Props::new().with("filename", "/a,,b")),
            ),
            Part::new(PartKind::Serial, Props::new().with("chardev", "ser0")),
        ];
        check_round_trip(&parts).unwrap();
        check_round_trip(&[]).unwrap();
    }

    /// The check fails whenever the rendering does not read back as the properties.
    #[test]
    fn refuses_what_does_not_read_back() {
        let refused = |part: Part| check_round_trip(&[part]).is_err();
        // A key holding `=` renders as another key: `a=b=c` reads back as `a` = `b=c`.
        assert!(refused(device(
            Props::new().with("driver", "d").with("a=b", "c")
        )));
        // A key holding `,` renders as a property without `=`.
        assert!(refused(device(
            Props::new().with("driver", "d").with("a,b", "c")
        )));
        // An implied key without its value (the rendering has no driver).
        assert!(refused(device(Props::new().with("id", "x"))));
        // A value that does not render at all.
        assert!(refused(device(
            Props::new().with("driver", "d").with("path", "a\0b")
        )));
        // A `-serial` part without its chardev.
        assert!(refused(Part::new(PartKind::Serial, Props::new())));
        // One bad part among good ones.
        let good = device(Props::new().with("driver", "d"));
        let bad = device(Props::new().with("driver", "d").with("k=", "v"));
        assert!(check_round_trip(&[good.clone(), bad]).is_err());
        check_round_trip(&[good]).unwrap();
    }
}
