//! Escaping with real QEMU as the oracle: generated ids and file names (commas, `=`, quotes,
//! spaces, non-ASCII, option-like text) are rendered by the device model and handed to one
//! paused QEMU, which must see exactly the id and path the model was given.
//!
//! - `-object` in the option syntax goes through HMP's `object_add`, which parses it with the
//!   same QemuOpts parser as the command line; the object's id and `mem-path` are read back
//!   with `qom-get`.
//! - `-object` in the JSON syntax goes through QMP's `object-add` with the rendered JSON.
//! - `-blockdev` in the JSON syntax goes through `blockdev-add`; its node name and file name
//!   are read back from `query-named-block-nodes`.
//!
//! Each case is hot-plugged and removed again, so a few hundred cases per run stay fast on one
//! QEMU. (The device model's own parser is checked against its renderer elsewhere; here the
//! judge is QEMU.)

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use hvarch_devices::block::{BlockBackend, BlockDevice, BlockProtocol};
use hvarch_devices::fd::NoFds;
use hvarch_devices::memory::MemoryBackend;
use hvarch_devices::part::{Part, PartKind, Syntax};
use hvarch_devices::QemuDevice;
use hvarch_tests::{paused_aarch64_with_root_port, QemuProcess, RawQmp};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

/// Cases per run: each is a few QMP round trips on the same QEMU.
const CASES: u32 = 200;

/// A QEMU id (a letter, then letters, digits, `-`, `.`, `_`), sometimes long.
fn qemu_id() -> impl Strategy<Value = String> {
    "[a-zA-Z][a-zA-Z0-9_.-]{0,30}"
}

/// A file name holding what option and JSON syntaxes must escape: commas (doubled in the
/// option syntax), `=`, quotes, backslashes, spaces, tabs, non-ASCII text and option-like
/// text such as `,id=x` or `,readonly=on`. Never `/` or NUL (not in a file name), never `.`
/// or `..` alone.
fn file_name() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => "[a-z0-9]{1,6}",
        2 => Just(",".to_owned()),
        1 => Just(",,".to_owned()),
        1 => Just("=".to_owned()),
        1 => Just(",id=evil".to_owned()),
        1 => Just(",readonly=on".to_owned()),
        1 => Just("\"".to_owned()),
        1 => Just("'".to_owned()),
        1 => Just("\\".to_owned()),
        1 => Just(" ".to_owned()),
        1 => Just("\t".to_owned()),
        1 => Just("à".to_owned()),
        1 => Just("{}[]:".to_owned()),
        1 => "\\PC{1,3}".prop_map(|s| s.replace(['/', '\0'], "")),
    ];
    proptest::collection::vec(piece, 1..6)
        .prop_map(|pieces| format!("f{}", pieces.concat()))
        .prop_filter("a usable file name", |name| {
            !name.is_empty() && name.len() < 200 && !name.contains(['/', '\0'])
        })
}

/// The single part of `device` of `kind`.
fn part_of(device: &dyn QemuDevice, kind: PartKind) -> Result<Part<'_>, TestCaseError> {
    let parts = device
        .parts()
        .map_err(|e| TestCaseError::fail(format!("the model refused: {e}")))?;
    parts
        .into_iter()
        .find(|p| p.kind() == kind)
        .ok_or_else(|| TestCaseError::fail(format!("no {kind:?} part")))
}

/// The option argument of `part` in `syntax` (what follows `-object`, `-blockdev`).
fn rendered(part: &Part, syntax: Syntax) -> Result<String, TestCaseError> {
    let [_, value] = part
        .to_args(syntax, &mut NoFds)
        .map_err(|e| TestCaseError::fail(format!("rendering failed: {e}")))?;
    Ok(value)
}

/// Creates the file `name` in `dir` (what the memory backend maps, the blockdev opens).
fn create(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; 1 << 20]).expect("create the test file");
    path
}

/// One memory backend, as the option syntax (HMP `object_add`) and as JSON (QMP
/// `object-add`): QEMU holds an object of that id whose `mem-path` is the file.
fn object_round_trip(
    qmp: &mut RawQmp,
    dir: &Path,
    id: &str,
    name: &str,
) -> Result<(), TestCaseError> {
    // What a failed case before it left behind (so shrinking reports the real failure).
    let _ = qmp.execute("object-del", json!({ "id": id }));
    let path = create(dir, name);
    let backend = MemoryBackend::file(id, 1 << 20, &path);
    let part = part_of(&backend, PartKind::Object)?;

    let options = rendered(&part, Syntax::Options)?;
    let said = qmp.hmp(&format!("object_add {options}"));
    prop_assert!(
        said.trim().is_empty(),
        "QEMU refused {:?}: {}",
        options,
        said
    );
    check_object(qmp, id, &path, &options)?;
    qmp.ok("object-del", json!({ "id": id }));

    let text = rendered(&part, Syntax::Json)?;
    let arguments: Value = serde_json::from_str(&text)
        .map_err(|e| TestCaseError::fail(format!("not JSON: {e}: {text}")))?;
    let added = qmp.execute("object-add", arguments);
    prop_assert!(added.is_ok(), "QEMU refused {}: {:?}", text, added);
    check_object(qmp, id, &path, &text)?;
    qmp.ok("object-del", json!({ "id": id }));
    std::fs::remove_file(&path).expect("remove the test file");
    Ok(())
}

fn check_object(
    qmp: &mut RawQmp,
    id: &str,
    path: &Path,
    rendered: &str,
) -> Result<(), TestCaseError> {
    let got = qmp.execute(
        "qom-get",
        json!({"path": format!("/objects/{id}"), "property": "mem-path"}),
    );
    prop_assert_eq!(
        got.as_ref().ok().and_then(Value::as_str),
        path.to_str(),
        "{} gave {:?}",
        rendered,
        got
    );
    Ok(())
}

/// One `-blockdev` as JSON (`blockdev-add`): QEMU holds a node of that name on the file.
fn blockdev_round_trip(
    qmp: &mut RawQmp,
    dir: &Path,
    node: &str,
    name: &str,
) -> Result<(), TestCaseError> {
    let _ = qmp.execute("blockdev-del", json!({ "node-name": node }));
    let path = create(dir, name);
    let disk = BlockDevice::new(
        "disk",
        BlockBackend::new(
            node,
            BlockProtocol::File {
                filename: path.clone(),
            },
        ),
    );
    let part = part_of(&disk, PartKind::Blockdev)?;
    let text = rendered(&part, Syntax::Json)?;
    let arguments: Value = serde_json::from_str(&text)
        .map_err(|e| TestCaseError::fail(format!("not JSON: {e}: {text}")))?;
    let added = qmp.execute("blockdev-add", arguments);
    prop_assert!(added.is_ok(), "QEMU refused {}: {:?}", text, added);
    let nodes = qmp.ok("query-named-block-nodes", json!({}));
    let file = nodes.as_array().and_then(|nodes| {
        nodes
            .iter()
            .find(|n| n["node-name"] == node)
            .and_then(|n| n["file"].as_str())
            .map(str::to_owned)
    });
    prop_assert_eq!(file.as_deref(), path.to_str(), "{}", text);
    qmp.ok("blockdev-del", json!({ "node-name": node }));
    std::fs::remove_file(&path).expect("remove the test file");
    Ok(())
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    })
}

/// The paused QEMU every case runs on, its QMP connection, and a directory for the files.
fn qemu() -> (QemuProcess, RawQmp) {
    let qemu = paused_aarch64_with_root_port();
    let qmp = qemu.raw_qmp();
    (qemu, qmp)
}

#[test]
fn objects_reach_qemu_with_their_ids_and_paths_in_both_syntaxes() {
    let (qemu, qmp) = qemu();
    let qmp = RefCell::new(qmp);
    let dir = qemu.dir().join("files");
    std::fs::create_dir_all(&dir).expect("files dir");
    let cases = Cell::new(0u32);
    runner()
        .run(&(qemu_id(), file_name()), |(id, name)| {
            cases.set(cases.get() + 1);
            object_round_trip(&mut qmp.borrow_mut(), &dir, &id, &name)
        })
        .unwrap_or_else(|e| panic!("{e}\nQEMU stderr: {}", qemu.stderr()));
    assert!(cases.get() >= CASES, "only {} cases ran", cases.get());
}

#[test]
fn blockdevs_reach_qemu_with_their_node_names_and_files() {
    let (qemu, qmp) = qemu();
    let qmp = RefCell::new(qmp);
    let dir = qemu.dir().join("files");
    std::fs::create_dir_all(&dir).expect("files dir");
    runner()
        .run(&(qemu_id(), file_name()), |(node, name)| {
            blockdev_round_trip(&mut qmp.borrow_mut(), &dir, &node, &name)
        })
        .unwrap_or_else(|e| panic!("{e}\nQEMU stderr: {}", qemu.stderr()));
}
