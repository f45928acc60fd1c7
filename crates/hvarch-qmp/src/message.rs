//! QMP messages: classification of raw inbound JSON, and outbound commands.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{Error, MISSING_DESC};
use crate::event::Event;
use crate::version::QemuVersion;

/// The server greeting: `{"QMP": {"version": {...}, "capabilities": [...]}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Greeting {
    /// QEMU's version.
    pub version: QemuVersion,
    /// The distribution package string (`version.package`), often empty.
    pub package: String,
    /// Capabilities the server offers (e.g. `oob`), unknown ones included.
    pub capabilities: Vec<String>,
    /// The greeting as received.
    pub raw: Value,
}

impl Greeting {
    /// Parses a greeting message.
    pub fn from_json(msg: &Value) -> Result<Greeting, Error> {
        let qmp = msg
            .get("QMP")
            .ok_or_else(|| Error::Greeting(format!("not a greeting: {msg}")))?;
        let version = qmp
            .get("version")
            .ok_or_else(|| Error::Greeting(format!("greeting without `version`: {msg}")))?;
        let qemu = version
            .get("qemu")
            .ok_or_else(|| Error::Greeting(format!("greeting without `version.qemu`: {msg}")))?;
        let capabilities = qmp
            .get("capabilities")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Greeting(format!("greeting without `capabilities`: {msg}")))?
            .iter()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        Ok(Greeting {
            version: QemuVersion::from_json(qemu)?,
            package: version
                .get("package")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            capabilities,
            raw: msg.clone(),
        })
    }

    /// Whether the server offers out-of-band execution.
    pub fn supports_oob(&self) -> bool {
        self.capabilities.iter().any(|c| c == "oob")
    }
}

/// A QMP command: a name and its JSON arguments (`Value::Null` for none).
///
/// Helpers in [`crate::commands`] build the govmm command set with exact arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The command name, e.g. `device_add`.
    pub name: String,
    /// The `arguments` object, or `Value::Null` when the command takes none.
    pub arguments: Value,
}

impl Command {
    /// A command with arguments (a JSON object, or `Value::Null` for none).
    pub fn new(name: impl Into<String>, arguments: Value) -> Self {
        Command {
            name: name.into(),
            arguments,
        }
    }

    /// A command without arguments.
    pub fn bare(name: impl Into<String>) -> Self {
        Command::new(name, Value::Null)
    }

    /// A command from a typed qapi-qmp command struct.
    pub fn from_typed<C: qapi_spec::Command>(cmd: &C) -> Result<Self, Error> {
        let arguments = serde_json::to_value(cmd).map_err(|e| Error::InvalidArguments {
            command: C::NAME.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Command::new(C::NAME, arguments))
    }

    /// The wire message with `id` (`{"execute":name,"arguments":{..},"id":id}`). Arguments are
    /// omitted when null or an empty object.
    pub fn to_message(&self, id: u64) -> Result<Value, Error> {
        let mut msg = Map::new();
        msg.insert("execute".into(), Value::String(self.name.clone()));
        match &self.arguments {
            Value::Null => {}
            Value::Object(o) if o.is_empty() => {}
            Value::Object(_) => {
                msg.insert("arguments".into(), self.arguments.clone());
            }
            other => {
                return Err(Error::InvalidArguments {
                    command: self.name.clone(),
                    reason: format!("arguments must be a JSON object, got {other}"),
                })
            }
        }
        msg.insert("id".into(), Value::from(id));
        Ok(Value::Object(msg))
    }
}

impl Command {
    /// The wire line with `id`: the bytes of [`Command::to_message`] and a newline, written
    /// directly (no intermediate JSON object).
    pub fn encode(&self, id: u64) -> Result<Vec<u8>, Error> {
        let arguments = match &self.arguments {
            Value::Null => None,
            Value::Object(o) if o.is_empty() => None,
            Value::Object(_) => Some(&self.arguments),
            other => {
                return Err(Error::InvalidArguments {
                    command: self.name.clone(),
                    reason: format!("arguments must be a JSON object, got {other}"),
                })
            }
        };
        let mut out = Vec::with_capacity(48 + self.name.len());
        out.extend_from_slice(b"{\"execute\":");
        // Writing a string or a `Value` into a Vec cannot fail (no I/O, string keys).
        let _ = serde_json::to_writer(&mut out, &self.name);
        if let Some(arguments) = arguments {
            out.extend_from_slice(b",\"arguments\":");
            let _ = serde_json::to_writer(&mut out, arguments);
        }
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.to_string().as_bytes());
        out.extend_from_slice(b"}\n");
        Ok(out)
    }
}

/// One inbound message, classified from raw JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The server greeting.
    Greeting(Greeting),
    /// A successful reply.
    Return {
        /// The reply's `id` (as sent by us), if any.
        id: Option<Value>,
        /// The `return` member.
        value: Value,
    },
    /// An error reply.
    Error {
        /// The reply's `id`, if any (none means QEMU could not parse a command).
        id: Option<Value>,
        /// The error class (`GenericError` etc.), or a placeholder if missing.
        class: String,
        /// The description, or `None` if QEMU sent none.
        desc: Option<String>,
    },
    /// An asynchronous event.
    Event(Event),
    /// A JSON object that is none of the above (tolerated and ignored).
    Unknown(Value),
}

impl Inbound {
    /// Classifies a decoded JSON message. Only a non-object is an error.
    pub fn classify(value: Value) -> Result<Inbound, Error> {
        let Value::Object(mut obj) = value else {
            return Err(Error::Protocol(format!(
                "inbound message is not a JSON object: {}",
                truncate(&value.to_string())
            )));
        };
        if let Some(Value::String(name)) = obj.remove("event") {
            return Ok(Inbound::Event(Event::from_message(name, &mut obj)));
        }
        if obj.contains_key("QMP") {
            return Greeting::from_json(&Value::Object(obj)).map(Inbound::Greeting);
        }
        let id = obj.remove("id");
        if let Some(value) = obj.remove("return") {
            return Ok(Inbound::Return { id, value });
        }
        if let Some(err) = obj.remove("error") {
            let class = err
                .get("class")
                .and_then(Value::as_str)
                .unwrap_or("(no error class)")
                .to_owned();
            let desc = err.get("desc").and_then(Value::as_str).map(str::to_owned);
            return Ok(Inbound::Error { id, class, desc });
        }
        if let Some(id) = id {
            obj.insert("id".into(), id);
        }
        Ok(Inbound::Unknown(Value::Object(obj)))
    }

    /// Decodes one line of raw bytes and classifies it (as [`Inbound::classify`] does).
    pub fn decode(line: &[u8]) -> Result<Inbound, Error> {
        match Parsed::parse(line)? {
            Parsed::Inbound(inbound) => Ok(inbound),
            Parsed::Return { id, value } => Ok(Inbound::Return {
                id,
                value: value_of(value)?,
            }),
        }
    }

    fn decode_general(line: &[u8]) -> Result<Inbound, Error> {
        let value: Value = serde_json::from_slice(line).map_err(|e| {
            Error::Protocol(format!(
                "inbound line is not valid JSON ({e}): {}",
                truncate(&String::from_utf8_lossy(line))
            ))
        })?;
        Inbound::classify(value)
    }
}

/// A decoded line as the session routes it: a reply's `return` member stays raw JSON, borrowed
/// from the line, so that the caller decodes it (into the type it asked for) rather than the
/// routing.
pub(crate) enum Parsed<'a> {
    /// A successful reply.
    Return {
        id: Option<Value>,
        value: &'a RawValue,
    },
    /// Anything else (or a reply the general path classified).
    Inbound(Inbound),
}

impl<'a> Parsed<'a> {
    /// Decodes `line`: replies and events, nearly every line, without building a JSON object
    /// for the message itself; anything unusual through [`Inbound::classify`].
    pub(crate) fn parse(line: &'a [u8]) -> Result<Parsed<'a>, Error> {
        if let Some(parsed) = serde_json::from_slice::<Envelope<'a>>(line)
            .ok()
            .and_then(Envelope::into_parsed)
        {
            return Ok(parsed);
        }
        Inbound::decode_general(line).map(Parsed::Inbound)
    }
}

/// Decodes raw JSON (from a line already decoded once) as a `Value`.
pub(crate) fn value_of(raw: &RawValue) -> Result<Value, Error> {
    serde_json::from_str(raw.get())
        .map_err(|e| Error::Protocol(format!("inbound reply is not valid JSON ({e})")))
}

/// The members of an inbound message that classify it. A member present with `null` is
/// `Some(Value::Null)`, as [`Inbound::classify`] sees it; unknown members are ignored.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(default, deserialize_with = "present")]
    event: Option<Value>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(rename = "QMP", default, deserialize_with = "present")]
    greeting: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(rename = "return", borrow, default, deserialize_with = "present_raw")]
    value: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    error: Option<Value>,
}

/// A member that is present, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

/// A member that is present, kept as raw JSON (`null` included).
fn present_raw<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<&'a RawValue>, D::Error> {
    <&'a RawValue as serde::Deserialize>::deserialize(d).map(Some)
}

impl<'a> Envelope<'a> {
    /// The message, when it is an event, a reply or an error reply in the plain form;
    /// `None` for whatever [`Inbound::classify`] should look at as a whole.
    fn into_parsed(self) -> Option<Parsed<'a>> {
        match (self.event, self.greeting, self.value, self.error) {
            (Some(Value::String(name)), _, _, _) => {
                Some(Parsed::Inbound(Inbound::Event(Event::new(
                    name,
                    self.data.unwrap_or(Value::Null),
                    self.timestamp.as_ref(),
                ))))
            }
            (None, None, Some(value), _) => Some(Parsed::Return { id: self.id, value }),
            (None, None, None, Some(err)) => Some(Parsed::Inbound(Inbound::Error {
                id: self.id,
                class: err
                    .get("class")
                    .and_then(Value::as_str)
                    .unwrap_or("(no error class)")
                    .to_owned(),
                desc: err.get("desc").and_then(Value::as_str).map(str::to_owned),
            })),
            _ => None,
        }
    }
}

/// The error for an error reply.
pub(crate) fn command_error(command: &str, class: String, desc: Option<String>) -> Error {
    Error::Command {
        command: command.to_owned(),
        class,
        desc: desc.unwrap_or_else(|| MISSING_DESC.to_owned()),
    }
}

/// Shortens text for error messages and logs.
pub(crate) fn truncate(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", s.get(..end).unwrap_or_default(), s.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn greeting() {
        let g = json!({"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2"}, "capabilities": ["oob", "future-cap"]}});
        match Inbound::classify(g).expect("ok") {
            Inbound::Greeting(g) => {
                assert_eq!(g.version, QemuVersion::new(10, 0, 2));
                assert!(g.supports_oob());
                assert_eq!(g.capabilities, vec!["oob", "future-cap"]);
                assert_eq!(g.package, "Debian 1:10.0.2");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Inbound::classify(json!({"QMP": {"capabilities": []}})),
            Err(Error::Greeting(_))
        ));
    }

    #[test]
    fn replies_and_errors() {
        assert_eq!(
            Inbound::decode(br#"{"return": {}, "id": 7}"#).expect("ok"),
            Inbound::Return {
                id: Some(json!(7)),
                value: json!({})
            }
        );
        assert_eq!(
            Inbound::decode(
                br#"{"error": {"class": "GenericError", "desc": "boom"}, "id": 1, "extra": 1}"#
            )
            .expect("ok"),
            Inbound::Error {
                id: Some(json!(1)),
                class: "GenericError".into(),
                desc: Some("boom".into())
            }
        );
        assert_eq!(
            Inbound::decode(br#"{"error": {"class": "GenericError"}}"#).expect("ok"),
            Inbound::Error {
                id: None,
                class: "GenericError".into(),
                desc: None
            }
        );
        let e = command_error("x", "C".into(), None);
        assert!(e.to_string().contains("no error description"), "{e}");
        assert!(matches!(Inbound::decode(b"[1,2]"), Err(Error::Protocol(_))));
        assert!(matches!(
            Inbound::decode(b"garbage"),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            Inbound::decode(br#"{"new": 1}"#),
            Ok(Inbound::Unknown(_))
        ));
    }

    #[test]
    fn command_message() {
        let c = Command::bare("query-status");
        assert_eq!(
            c.to_message(3).expect("ok"),
            json!({"execute": "query-status", "id": 3})
        );
        let c = Command::new("device_del", json!({"id": "d"}));
        assert_eq!(
            c.to_message(4).expect("ok"),
            json!({"execute": "device_del", "arguments": {"id": "d"}, "id": 4})
        );
        assert!(Command::new("x", json!([1])).to_message(1).is_err());
        assert!(Command::new("x", json!([1])).encode(1).is_err());
        // The encoded line is the message, compact, and a newline.
        for (c, id) in [
            (Command::bare("query-status"), 3),
            (
                Command::new("device_del", json!({"id": "d\"\n,"})),
                u64::MAX,
            ),
            (Command::new("x", json!({})), 0),
        ] {
            let line = c.encode(id).expect("encode");
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(
                line,
                crate::codec::encode_line(&c.to_message(id).expect("message"))
            );
        }
        let typed = Command::from_typed(&qapi_qmp::device_del { id: "d".into() }).expect("ok");
        assert_eq!(typed, Command::new("device_del", json!({"id": "d"})));
    }
}
