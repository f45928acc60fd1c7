//! I/O threads ([`IoThread`], `-object iothread`): event loops that run a device's I/O outside
//! QEMU's main loop, named by a disk's or SCSI controller's `iothread=`.

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Result};
use crate::id::check_id;
use crate::part::Part;
use crate::props::Props;

/// An I/O thread, `-object iothread,id=…[,poll-max-ns=…]`.
///
/// govmm kept these in `Config.IOThreads` and emitted `-object iothread,id=<ID>` near the end of
/// the command line; here an I/O thread is a device like any other, so it is ordered with the
/// devices that use it and can be hot-plugged (`object-add`) before a disk that names it.
///
/// ```
/// use hvarch_devices::iothread::IoThread;
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let mut thread = IoThread::new("iothread0");
/// thread.poll_max_ns = Some(32768);
/// let parts = thread.parts().unwrap();
/// assert_eq!(
///     parts[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-object", "iothread,id=iothread0,poll-max-ns=32768"],
/// );
/// assert_eq!(parts[0].qmp_add(&mut NoFds).unwrap().command, "object-add");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoThread {
    /// The object id (what `iothread=` names).
    pub id: String,
    /// The longest time the thread busy-polls before sleeping, in nanoseconds (`poll-max-ns=`;
    /// `0` turns polling off). QEMU's default applies when unset.
    #[serde(default)]
    pub poll_max_ns: Option<u64>,
}

impl IoThread {
    /// An I/O thread `id` with QEMU's default polling.
    pub fn new(id: impl Into<String>) -> Self {
        IoThread {
            id: id.into(),
            poll_max_ns: None,
        }
    }
}

impl QemuDevice for IoThread {
    fn kind(&self) -> &'static str {
        "iothread"
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        if let Some(ns) = self.poll_max_ns {
            if i64::try_from(ns).is_err() {
                return Err(invalid(
                    what,
                    "poll_max_ns",
                    ns,
                    "QEMU takes a signed 64-bit value",
                ));
            }
        }
        Ok(())
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        emit(Part::object(
            "iothread",
            &self.id,
            Props::new().opt("poll-max-ns", self.poll_max_ns),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{bad_id, id, Cases};
    use proptest::prelude::*;
    use serde_json::json;

    /// govmm (kata-go.md §2.5 step 15): `-object iothread,id=<ID>`; identical here.
    #[test]
    fn govmm_reference_case() {
        let thread = IoThread::new("iothread1");
        let parts = thread.parts().unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(
            parts[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
            ["-object", "iothread,id=iothread1"]
        );
    }

    #[test]
    fn qmp_and_json() {
        let mut thread = IoThread::new("io0");
        thread.poll_max_ns = Some(0);
        let part = &thread.parts().unwrap()[0];
        let add = part.qmp_add(&mut NoFds).unwrap();
        assert_eq!(add.command, "object-add");
        assert_eq!(
            add.arguments,
            json!({"qom-type": "iothread", "id": "io0", "poll-max-ns": 0})
        );
        assert_eq!(
            part.render(Syntax::Json, &mut NoFds).unwrap(),
            r#"{"qom-type":"iothread","id":"io0","poll-max-ns":0}"#
        );
        let del = part.qmp_del().unwrap();
        assert_eq!(
            (del.command, del.arguments),
            ("object-del", json!({"id": "io0"}))
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = IoThread::new("0io").validate().unwrap_err().to_string();
        assert!(err.contains("iothread") && err.contains("id"), "{err}");
        let mut thread = IoThread::new("io");
        thread.poll_max_ns = Some(u64::MAX);
        let err = thread.parts().unwrap_err().to_string();
        assert!(err.contains("poll_max_ns"), "{err}");
    }

    #[test]
    fn toml_spec_round_trip() {
        let thread: IoThread = toml::from_str("id = \"io0\"\npoll_max_ns = 32768").unwrap();
        assert_eq!(thread.poll_max_ns, Some(32768));
        let again: IoThread = toml::from_str(&toml::to_string(&thread).unwrap()).unwrap();
        assert_eq!(again, thread);
        assert!(toml::from_str::<IoThread>("id = \"io0\"\npoll = 1").is_err());
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        let thread = (id(), proptest::option::of(0..=i64::MAX as u64))
            .prop_map(|(id, poll_max_ns)| IoThread { id, poll_max_ns });
        Cases::new(thread)
            .fault("id", bad_id(), |t, v| t.id = v)
            .fault("poll_max_ns", i64::MAX as u64 + 1.., |t, v| {
                t.poll_max_ns = Some(v)
            })
            .check();
    }
}
