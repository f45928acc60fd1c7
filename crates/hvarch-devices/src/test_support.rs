//! Helpers shared by the device modules' unit tests (compiled for tests only).
//!
//! - proptest strategies for the values a spec file may put in a field, valid ([`text`],
//!   [`id`], [`path`], [`transport`], [`block_backend`], …) and invalid ([`bad_id`],
//!   [`bad_path`], [`nul_text`], …);
//! - [`args`] / [`args_with`]: a device's command-line arguments in option syntax, what the
//!   reference cases compare with, and [`qmp_adds`], its hot-plug commands;
//! - [`check_round_trip`]: the property every device's `parts()` must hold, that each part's
//!   option syntax parses back to exactly its properties;
//! - [`Cases`]: the property test of a device: valid devices render and round-trip, devices
//!   with one field broken on purpose are refused with an error naming that field, and most
//!   generated devices are valid.

use std::cell::Cell;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::block::{Aio, BlockBackend, BlockCache, BlockFormat, BlockProtocol};
use crate::device::QemuDevice;
use crate::fd::{FdResolver, NoFds};
use crate::part::{Part, PartKind, QmpCall, Syntax};
use crate::pci::PciAddr;
use crate::props::Props;
use crate::syntax::{flatten, parse_options};
use crate::transport::{Transport, VirtioOpts};

/// Cases for a property test that wants `cases` natively: `PROPTEST_CASES` when it is set
/// (the cross targets set it low: their runs prove portability, and each case is emulated),
/// else `cases`. Never below `floor`, what the test's own coverage assertions need.
pub fn cases(cases: u32, floor: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases)
        .max(floor)
}

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

/// A valid QEMU identifier (`id_wellformed()`): a letter, then letters, digits, `-`, `.`, `_`.
pub fn id() -> impl Strategy<Value = String> {
    "[a-zA-Z][a-zA-Z0-9._-]{0,10}"
}

/// An identifier QEMU refuses: empty, a first character that is not a letter, or a character
/// outside its set (`,` `=` space, quotes, `é`, `/`, `:`, `\\`).
pub fn bad_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[0-9_.-][a-z0-9]{0,6}",
        "[a-z]{1,4}[,= \"'é/:\\\\][a-z0-9,=]{0,4}",
    ]
}

/// Non-empty [`text`] of at most `max` bytes.
pub fn short_text(max: usize) -> impl Strategy<Value = String> {
    text()
        .prop_map(move |mut t| {
            let mut end = t.len().min(max);
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.truncate(end);
            t
        })
        .prop_filter("empty", |t| !t.is_empty())
}

/// A path a spec may give: any non-empty text without NUL, often holding what option syntax
/// must escape or keep (`,` `=` space, quotes, `é`, a leading `-`).
pub fn path() -> impl Strategy<Value = PathBuf> {
    prop_oneof!["[^\u{0}]{1,24}", "-?/[a-z,= \"'é/-]{1,16}",].prop_map(PathBuf::from)
}

/// A path no QEMU option can carry: empty, or not UTF-8.
pub fn bad_path() -> impl Strategy<Value = PathBuf> {
    prop_oneof![
        Just(PathBuf::new()),
        "[a-z/]{0,6}".prop_map(|p| {
            let mut bytes = p.into_bytes();
            bytes.extend_from_slice(b"\xff\xfe");
            PathBuf::from(OsString::from_vec(bytes))
        }),
    ]
}

/// Text holding a NUL byte, which no command-line argument can carry.
pub fn nul_text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,6}\u{0}[^\u{0}]{0,6}"
}

/// A PCI address (slot 0–31, function 0–7).
pub fn pci_addr() -> impl Strategy<Value = PciAddr> {
    (0..=PciAddr::MAX_SLOT, 0..=PciAddr::MAX_FUNCTION)
        .prop_map(|(s, f)| PciAddr::new(s, f).unwrap_or_else(|e| unreachable!("{e}")))
}

/// A CCW device number, `<cssid>.<ssid>.<devno>` in hex.
pub fn devno() -> impl Strategy<Value = String> {
    "[0-9a-f]{1,2}\\.[0-3]\\.[0-9a-f]{4}"
}

/// A malformed CCW device number.
pub fn bad_devno() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[0-9a-f]{1,2}\\.[0-3]\\.[0-9a-f]{1,3}",
        "[0-9a-f]{3}\\.[0-3]\\.[0-9a-f]{4}",
        "[g-z,= ]{1,6}",
    ]
}

/// Valid transport settings and a PCI address to go with them: PCI (two times in three, with
/// an address, `disable-modern` and a ROM file or not), CCW with a device number, or MMIO.
pub fn transport() -> impl Strategy<Value = (VirtioOpts, Option<PciAddr>)> {
    prop_oneof![
        4 => (any::<bool>(), proptest::option::of(text()), proptest::option::of(pci_addr()))
            .prop_map(|(disable_modern, romfile, addr)| {
                let virtio = VirtioOpts {
                    disable_modern,
                    romfile,
                    ..VirtioOpts::on(Transport::Pci)
                };
                (virtio, addr)
            }),
        1 => (devno(), any::<bool>()).prop_map(|(devno, iommu_platform)| {
            let virtio = VirtioOpts {
                devno: Some(devno),
                iommu_platform,
                ..VirtioOpts::on(Transport::Ccw)
            };
            (virtio, None)
        }),
        1 => Just((VirtioOpts::on(Transport::Mmio), None)),
    ]
}

/// A MAC address, `xx:xx:xx:xx:xx:xx` in hex.
pub fn mac() -> impl Strategy<Value = String> {
    "[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"
}

/// Text that is not a MAC address.
pub fn bad_mac() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f:]{0,16}",
        "[^\u{0}]{0,8}",
        "[0-9a-f]{2}(-[0-9a-f]{2}){5}"
    ]
}

/// A valid `-blockdev` node tree: a raw, qcow2 or bare file or host device node with any
/// cache and AIO settings that go together, or a `null-co` node.
pub fn block_backend() -> impl Strategy<Value = BlockBackend> {
    let format = prop::sample::select(vec![
        BlockFormat::Raw,
        BlockFormat::Qcow2,
        BlockFormat::None,
    ]);
    let aio = prop::sample::select(vec![Aio::Threads, Aio::Native, Aio::IoUring]);
    let cache =
        any::<(bool, bool)>().prop_map(|(direct, no_flush)| BlockCache { direct, no_flush });
    let file = (path(), any::<bool>(), format, proptest::option::of(aio)).prop_map(
        |(filename, host, format, aio)| {
            let protocol = if host {
                BlockProtocol::HostDevice { filename }
            } else {
                BlockProtocol::File { filename }
            };
            (protocol, format, aio)
        },
    );
    let null =
        any::<u64>().prop_map(|size| (BlockProtocol::NullCo { size }, BlockFormat::None, None));
    (
        id(),
        prop_oneof![3 => file, 1 => null],
        any::<bool>(),
        proptest::option::of(cache),
    )
        .prop_map(
            |(node_name, (protocol, format, aio), read_only, mut cache)| {
                if aio == Some(Aio::Native) {
                    cache = Some(BlockCache {
                        direct: true,
                        ..cache.unwrap_or_default()
                    });
                }
                BlockBackend {
                    format,
                    read_only,
                    cache,
                    aio,
                    ..BlockBackend::new(node_name, protocol)
                }
            },
        )
}

/// A generated device and what rendering it must do.
#[derive(Debug)]
pub struct Case<D> {
    /// The device.
    pub device: D,
    /// `None` for a valid device; else the field broken on purpose and its bad value (shown).
    pub fault: Option<(&'static str, String)>,
}

/// The property test of a device type: valid devices (from one strategy) and devices with one
/// field broken on purpose (one case in four, each [`fault`](Cases::fault) equally likely).
///
/// [`check`](Cases::check) runs 512 cases and requires that
/// - every valid device renders in both syntaxes and [`check_round_trip`] holds for its parts;
/// - every broken device is refused (by `parts()` or when a part renders) with an error whose
///   [`crate::error::Error::field`] is the broken field and whose message names it;
/// - at least 30 % of the cases were valid, and some were broken: a strategy that produces
///   almost no valid device tests nothing.
pub struct Cases<D> {
    valid: BoxedStrategy<D>,
    faults: Vec<BoxedStrategy<Case<D>>>,
}

impl<D: QemuDevice + fmt::Debug + 'static> Cases<D> {
    /// Cases drawn from `valid`, a strategy of valid devices only.
    pub fn new(valid: impl Strategy<Value = D> + 'static) -> Self {
        Cases {
            valid: valid.boxed(),
            faults: Vec::new(),
        }
    }

    /// Adds a way to break a valid device: `set` puts a value from `bad` (always invalid) in
    /// the field the error must name, `field`.
    pub fn fault<V: fmt::Debug + 'static>(
        mut self,
        field: &'static str,
        bad: impl Strategy<Value = V> + 'static,
        set: impl Fn(&mut D, V) + 'static,
    ) -> Self {
        let broken = (self.valid.clone(), bad).prop_map(move |(mut device, value)| {
            let shown = format!("{value:?}");
            set(&mut device, value);
            Case {
                device,
                fault: Some((field, shown)),
            }
        });
        self.faults.push(broken.boxed());
        self
    }

    /// Adds the transport faults of a virtio device whose settings and PCI address `get`
    /// returns: an address off the PCI transport (`addr`), a malformed CCW device number
    /// (`devno`), a PCI-only setting on MMIO (`romfile`).
    pub fn virtio_faults(self, get: fn(&mut D) -> (&mut VirtioOpts, &mut Option<PciAddr>)) -> Self {
        self.fault("addr", (pci_addr(), devno()), move |d, (addr, devno)| {
            let (virtio, a) = get(d);
            *virtio = VirtioOpts {
                devno: Some(devno),
                ..VirtioOpts::on(Transport::Ccw)
            };
            *a = Some(addr);
        })
        .fault("devno", bad_devno(), move |d, devno| {
            let (virtio, addr) = get(d);
            *virtio = VirtioOpts {
                devno: Some(devno),
                ..VirtioOpts::on(Transport::Ccw)
            };
            *addr = None;
        })
        .fault("romfile", text(), move |d, romfile| {
            let (virtio, addr) = get(d);
            *virtio = VirtioOpts {
                romfile: Some(romfile),
                ..VirtioOpts::on(Transport::Mmio)
            };
            *addr = None;
        })
    }

    /// Adds the faults of the device's `-blockdev` node tree, reached through `get`: a bad or
    /// too long node name, a missing or unusable file name, settings `null-co` does not take,
    /// native AIO without `cache.direct`.
    pub fn block_backend_faults(self, get: fn(&mut D) -> &mut BlockBackend) -> Self {
        let file = |filename: PathBuf| BlockProtocol::File { filename };
        self.fault("node_name", bad_id(), move |d, v| get(d).node_name = v)
            .fault("node_name", "[a-z]{32,40}", move |d, v| {
                get(d).node_name = v
            })
            .fault("filename", bad_path(), move |d, v| {
                get(d).protocol = file(v)
            })
            .fault("filename", nul_text(), move |d, v| {
                get(d).protocol = BlockProtocol::HostDevice { filename: v.into() }
            })
            .fault("format", any::<bool>(), move |d, qcow2| {
                let backend = get(d);
                backend.protocol = BlockProtocol::NullCo { size: 1 << 20 };
                backend.format = if qcow2 {
                    BlockFormat::Qcow2
                } else {
                    BlockFormat::Raw
                };
            })
            .fault("aio", Just(Aio::Threads), move |d, aio| {
                let backend = get(d);
                *backend = BlockBackend {
                    aio: Some(aio),
                    ..BlockBackend::new(
                        backend.node_name.clone(),
                        BlockProtocol::NullCo { size: 0 },
                    )
                };
            })
            .fault("aio", path(), move |d, filename| {
                let backend = get(d);
                backend.protocol = file(filename);
                backend.aio = Some(Aio::Native);
                backend.cache = None;
            })
    }

    /// Runs the cases (see [`Cases`]); panics with the minimal failing case.
    pub fn check(self) {
        let valid = self
            .valid
            .prop_map(|device| Case {
                device,
                fault: None,
            })
            .boxed();
        let has_faults = !self.faults.is_empty();
        let strategy = if has_faults {
            Union::new_weighted(vec![(3, valid), (1, Union::new(self.faults).boxed())]).boxed()
        } else {
            valid
        };
        // 64 cases at least: a 1-in-4 fault is then missed once in 10^8 runs.
        let config = Config {
            cases: cases(512, 64),
            failure_persistence: None,
            ..Config::default()
        };
        let counts = Cell::new((0u32, 0u32));
        let result = TestRunner::new(config).run(&strategy, |case| {
            let rendered = check_case(&case.device, case.fault.as_ref().map(|f| f.0))?;
            let (valid, refused) = counts.get();
            counts.set(if rendered {
                (valid + 1, refused)
            } else {
                (valid, refused + 1)
            });
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        let (valid, refused) = counts.get();
        assert!(
            valid * 10 >= (valid + refused) * 3,
            "only {valid} of {} cases were valid devices: the strategy tests almost nothing",
            valid + refused
        );
        assert!(!has_faults || refused > 0, "no broken device was generated");
    }
}

/// Renders `device` (its parts, each in both syntaxes) and checks the outcome against
/// `fault`; returns whether it rendered.
fn check_case(device: &dyn QemuDevice, fault: Option<&'static str>) -> Result<bool, TestCaseError> {
    let rendered = device.parts().and_then(|parts| {
        for part in &parts {
            part.render(Syntax::Options, &mut NoFds)?;
            part.render(Syntax::Json, &mut NoFds)?;
        }
        Ok(parts)
    });
    match (rendered, fault) {
        (Ok(parts), None) => check_round_trip(&parts).map(|()| true),
        (Err(e), Some(field)) => {
            prop_assert_eq!(e.field(), Some(field), "{}", e);
            prop_assert!(
                e.to_string().contains(field),
                "{} does not name {}",
                e,
                field
            );
            Ok(false)
        }
        (Ok(_), Some(field)) => Err(TestCaseError::fail(format!(
            "accepted although `{field}` was made invalid"
        ))),
        (Err(e), None) => Err(TestCaseError::fail(format!("refused a valid device: {e}"))),
    }
}

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
            .map(|(k, v)| (k, v.clone()))
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
