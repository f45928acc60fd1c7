//! Property tests: framing is independent of how the byte stream is split, and no input panics.

use hvarch_qmp::codec::LineDecoder;
use hvarch_qmp::protocol::{Action, Session};
use hvarch_qmp::Inbound;
use proptest::prelude::*;
use serde_json::{Map, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i32>().prop_map(|i| Value::from(f64::from(i) / 4.0)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn message() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-z-]{1,8}", json_value(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Messages with any mix of the members that classify a QMP message, of any JSON type, among
/// other members.
fn qmp_like_message() -> impl Strategy<Value = Value> {
    let member = prop_oneof![
        Just("event"),
        Just("data"),
        Just("timestamp"),
        Just("QMP"),
        Just("id"),
        Just("return"),
        Just("error"),
        Just("other"),
    ];
    let value = prop_oneof![
        json_value(),
        ".{0,12}".prop_map(Value::String),
        Just(serde_json::json!({"class": "GenericError", "desc": "boom"})),
        Just(serde_json::json!({"seconds": 1, "microseconds": 2})),
    ];
    prop::collection::vec((member, value), 0..6).prop_map(|members| {
        Value::Object(
            members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<Map<_, _>>(),
        )
    })
}

proptest! {
    #[test]
    fn decode_classifies_as_the_general_path_does(msg in qmp_like_message()) {
        let line = serde_json::to_vec(&msg).expect("serialise");
        let general = Inbound::classify(msg);
        let decoded = Inbound::decode(&line);
        match (general, decoded) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            (a, b) => prop_assert!(false, "classify: {:?}, decode: {:?}", a, b),
        }
    }

    #[test]
    fn split_anywhere_decodes_the_same(
        msgs in prop::collection::vec(message(), 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        crlf in any::<bool>(),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(serde_json::to_vec(m).expect("serialise"));
            stream.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut decoder = LineDecoder::new(1 << 20);
        let mut decoded = Vec::new();
        let mut prev = 0;
        for p in points.into_iter().chain([stream.len()]) {
            decoder.push(&stream[prev..p]);
            prev = p;
            while let Some(line) = decoder.next_line().expect("within limit") {
                decoded.push(serde_json::from_slice::<Value>(line).expect("valid JSON"));
            }
        }
        prop_assert_eq!(decoded, msgs);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn a_command_encodes_as_its_message_line(
        name in ".{0,16}",
        arguments in prop_oneof![Just(Value::Null), message()],
        id in any::<u64>(),
    ) {
        let command = hvarch_qmp::Command::new(name, arguments);
        let line = command.encode(id).expect("an object or null");
        let message = command.to_message(id).expect("an object or null");
        prop_assert_eq!(line, hvarch_qmp::codec::encode_line(&message));
    }

    #[test]
    fn arbitrary_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..8)) {
        let mut s: Session<()> = Session::new(256, true);
        let mut out: Vec<Action<()>> = Vec::new();
        for c in &chunks {
            s.feed(c, &mut out);
            let _ = Inbound::decode(c);
        }
        s.eof(&mut out);
    }

    #[test]
    fn ready_session_never_panics(lines in prop::collection::vec(prop_oneof![
        message().prop_map(|m| m.to_string()),
        Just("{\"return\": {}, \"id\": 2}".to_owned()),
        Just("{\"error\": {}, \"id\": 2}".to_owned()),
        Just("{\"event\": \"X\", \"timestamp\": {\"seconds\": -1, \"microseconds\": \"bad\"}}".to_owned()),
        ".{0,40}",
    ], 0..10)) {
        let mut s: Session<u8> = Session::new(4096, false);
        let mut out = Vec::new();
        s.feed(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}}, \"capabilities\": []}}\n", &mut out);
        let _ = s.negotiate();
        s.feed(b"{\"return\": {}, \"id\": 1}\n", &mut out);
        let _ = s.start_command(&hvarch_qmp::Command::bare("x"), 7);
        for l in &lines {
            s.feed(l.as_bytes(), &mut out);
            s.feed(b"\n", &mut out);
        }
    }
}
