//! QMP events: raw (name, data, timestamp) with typed decoding on demand, and filters.

use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::error::Error;

/// When QEMU emitted an event: seconds and microseconds since the Unix epoch.
///
/// Both are `-1` when QEMU could not read the host clock (QMP spec), which is why they are signed.
/// (govmm passes the microseconds as nanoseconds; this type keeps them as microseconds.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Seconds since the epoch, or -1.
    pub seconds: i64,
    /// Microseconds within the second, or -1.
    pub microseconds: i64,
}

impl Timestamp {
    /// The time as a `SystemTime`, or `None` if unavailable (-1) or out of range.
    pub fn to_system_time(&self) -> Option<SystemTime> {
        let secs = u64::try_from(self.seconds).ok()?;
        let micros = u64::try_from(self.microseconds).ok()?;
        SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))?
            .checked_add(Duration::from_micros(micros))
    }

    fn from_json(v: Option<&Value>) -> Timestamp {
        let get = |k: &str| {
            v.and_then(|t| t.get(k))
                .and_then(Value::as_i64)
                .unwrap_or(-1)
        };
        Timestamp {
            seconds: get("seconds"),
            microseconds: get("microseconds"),
        }
    }
}

/// An asynchronous QMP event, kept as raw JSON so unknown events from newer QEMUs are never lost.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event name, e.g. `DEVICE_DELETED`.
    pub name: String,
    /// The event's `data` member (`Value::Null` when absent).
    pub data: Value,
    /// When QEMU emitted it.
    pub timestamp: Timestamp,
}

impl Event {
    /// Builds an event from an inbound message that has an `event` member.
    pub(crate) fn from_message(name: String, msg: &mut serde_json::Map<String, Value>) -> Event {
        let data = msg.remove("data").unwrap_or(Value::Null);
        Event::new(name, data, msg.get("timestamp"))
    }

    /// An event called `name` with `data` and the message's `timestamp` member.
    pub(crate) fn new(name: String, data: Value, timestamp: Option<&Value>) -> Event {
        Event {
            name,
            data,
            timestamp: Timestamp::from_json(timestamp),
        }
    }

    /// The event as QMP JSON (`{"event":..,"data":..,"timestamp":..}`).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "event": self.name,
            "timestamp": {"seconds": self.timestamp.seconds, "microseconds": self.timestamp.microseconds},
        });
        if !self.data.is_null() {
            v["data"] = self.data.clone();
        }
        v
    }

    /// Decodes the event into a typed representation on demand, e.g. `qapi_qmp::Event`.
    ///
    /// Fails with [`Error::Decode`] for events or values the type does not know (qapi-qmp's
    /// enums are closed and its timestamps unsigned); the raw event stays available.
    pub fn as_typed<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let raw = self.to_json();
        serde_json::from_value(raw.clone()).map_err(|source| Error::Decode {
            what: format!("event {}", self.name),
            raw,
            source,
        })
    }

    /// Decodes only the `data` member into `T` (e.g. `qapi_qmp::DEVICE_DELETED`).
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let data = if self.data.is_null() {
            json!({})
        } else {
            self.data.clone()
        };
        serde_json::from_value(data.clone()).map_err(|source| Error::Decode {
            what: format!("event {} data", self.name),
            raw: data,
            source,
        })
    }
}

/// Selects events by name and, optionally, by values in their `data`.
///
/// ```
/// use hvarch_qmp::EventFilter;
/// let f = EventFilter::device_deleted("disk1");
/// assert_eq!(f.to_string(), "DEVICE_DELETED with device=\"disk1\"");
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventFilter {
    name: Option<String>,
    data: Vec<(String, Value)>,
}

impl EventFilter {
    /// Matches every event.
    pub fn any() -> Self {
        EventFilter::default()
    }

    /// Matches events called `name`.
    pub fn name(name: impl Into<String>) -> Self {
        EventFilter {
            name: Some(name.into()),
            data: Vec::new(),
        }
    }

    /// Additionally requires `data[key] == value`.
    pub fn with_data(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.data.push((key.into(), value.into()));
        self
    }

    /// `DEVICE_DELETED` for the device with qdev id `id`.
    pub fn device_deleted(id: &str) -> Self {
        EventFilter::name("DEVICE_DELETED").with_data("device", id)
    }

    /// `POWERDOWN` (what QEMU emits for `system_powerdown`; govmm once waited for `SHUTDOWN`).
    pub fn powerdown() -> Self {
        EventFilter::name("POWERDOWN")
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        if let Some(name) = &self.name {
            if *name != event.name {
                return false;
            }
        }
        self.data
            .iter()
            .all(|(k, v)| event.data.get(k.as_str()) == Some(v))
    }
}

impl std::fmt::Display for EventFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name.as_deref().unwrap_or("any event"))?;
        for (i, (k, v)) in self.data.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { " with " } else { ", " })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(v: Value) -> Event {
        let mut m = v.as_object().cloned().expect("object");
        let name = m
            .remove("event")
            .and_then(|n| n.as_str().map(str::to_owned))
            .expect("name");
        Event::from_message(name, &mut m)
    }

    #[test]
    fn timestamp_micro_not_nano() {
        let e =
            ev(json!({"event":"STOP","timestamp":{"seconds":1700000000,"microseconds":250000}}));
        let t = e.timestamp.to_system_time().expect("valid");
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after epoch"),
            Duration::from_millis(1_700_000_000_250)
        );
    }

    #[test]
    fn timestamp_minus_one() {
        let e = ev(json!({"event":"STOP","timestamp":{"seconds":-1,"microseconds":-1}}));
        assert_eq!(
            e.timestamp,
            Timestamp {
                seconds: -1,
                microseconds: -1
            }
        );
        assert_eq!(e.timestamp.to_system_time(), None);
        // qapi-qmp's unsigned timestamp cannot hold it: a Decode error, not a panic.
        assert!(matches!(
            e.as_typed::<qapi_qmp::Event>(),
            Err(Error::Decode { .. })
        ));
    }

    #[test]
    fn typed_on_demand_and_unknown_tolerated() {
        let e = ev(
            json!({"event":"DEVICE_DELETED","data":{"device":"d1","path":"/machine/peripheral/d1"},
            "timestamp":{"seconds":1,"microseconds":2}}),
        );
        match e.as_typed::<qapi_qmp::Event>().expect("typed") {
            qapi_qmp::Event::DEVICE_DELETED { data, .. } => {
                assert_eq!(data.device.as_deref(), Some("d1"))
            }
            other => panic!("unexpected {other:?}"),
        }
        let d: qapi_qmp::DEVICE_DELETED = e.data_as().expect("data");
        assert_eq!(d.path, "/machine/peripheral/d1");
        let unknown = ev(
            json!({"event":"FROM_QEMU_42","data":{"x":1},"timestamp":{"seconds":1,"microseconds":2}}),
        );
        assert_eq!(unknown.name, "FROM_QEMU_42");
        assert!(unknown.as_typed::<qapi_qmp::Event>().is_err());
    }

    #[test]
    fn filters() {
        let e = ev(json!({"event":"DEVICE_DELETED","data":{"device":"d1"}}));
        assert!(EventFilter::device_deleted("d1").matches(&e));
        assert!(!EventFilter::device_deleted("d2").matches(&e));
        assert!(EventFilter::any().matches(&e));
        assert!(!EventFilter::powerdown().matches(&e));
        let no_data = ev(json!({"event":"DEVICE_DELETED"}));
        assert!(!EventFilter::device_deleted("d1").matches(&no_data));
        assert_eq!(no_data.timestamp.seconds, -1);
    }
}
