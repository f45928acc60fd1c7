//! Property test of the session's flow control: whatever callers submit, cancel and QEMU
//! answers, at most 8 commands are written and unanswered, commands are written in the order
//! they were submitted (less those cancelled before their turn), a command carrying descriptors
//! is written alone and never while other descriptors are on their way, and every command is
//! written once and answered once.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::OwnedFd;

use hvarch_qmp::protocol::{Action, Session, MAX_IN_FLIGHT};
use hvarch_qmp::Command;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// A caller submits a command (with a descriptor or not).
    Submit { fds: bool },
    /// The I/O layer writes what is ready.
    Poll,
    /// QEMU answers one of the commands in flight (any order: the session must not care).
    Reply(prop::sample::Index),
    /// A caller gives up on one of its commands.
    Cancel(prop::sample::Index),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(|fds| Op::Submit { fds }),
        3 => Just(Op::Poll),
        3 => any::<prop::sample::Index>().prop_map(Op::Reply),
        1 => any::<prop::sample::Index>().prop_map(Op::Cancel),
    ]
}

fn ready_session() -> Session<u64> {
    let mut s = Session::new(1 << 20, true);
    let mut out = Vec::new();
    s.feed(
        b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}}, \"capabilities\": [\"oob\"]}}\n",
        &mut out,
    );
    let _ = s.negotiate().expect("negotiate");
    s.feed(b"{\"return\": {}, \"id\": 1}\n", &mut out);
    s
}

fn dev_null() -> OwnedFd {
    std::fs::File::open("/dev/null")
        .expect("open /dev/null")
        .into()
}

/// The model's view of the commands.
#[derive(Default)]
struct Model {
    /// Submitted ids in order, with whether they carry descriptors.
    submitted: Vec<(u64, bool)>,
    /// Cancelled before they were written: never written.
    dropped: BTreeSet<u64>,
    /// Cancelled after they were written: answered, but not delivered.
    abandoned: BTreeSet<u64>,
    written: Vec<u64>,
    in_flight: BTreeSet<u64>,
    delivered: HashMap<u64, u32>,
    /// The id each written command carried on the wire (what QEMU echoes).
    wire_ids: HashMap<u64, u64>,
}

impl Model {
    fn carries_fds(&self, id: u64) -> bool {
        self.submitted.iter().any(|&(i, fds)| i == id && fds)
    }

    fn poll(&mut self, s: &mut Session<u64>) -> bool {
        let Some(t) = s.poll_transmit() else {
            return false;
        };
        assert!(!t.ids.is_empty());
        let lines = t.bytes.iter().filter(|&&b| b == b'\n').count();
        assert_eq!(lines, t.ids.len(), "one line per command");
        if t.fds.is_empty() {
            assert!(t.ids.iter().all(|&id| !self.carries_fds(id)));
        } else {
            assert_eq!(t.ids.len(), 1, "descriptors go alone");
            assert!(self.carries_fds(t.ids[0]));
            assert!(
                self.in_flight.iter().all(|&id| !self.carries_fds(id)),
                "two sets of descriptors on their way"
            );
        }
        let wire_ids = hvarch_qmp::testing::ids_on_the_wire(&t.bytes);
        for (id, wire_id) in t.ids.into_iter().zip(wire_ids) {
            assert!(
                self.in_flight
                    .iter()
                    .all(|other| self.wire_ids[other] != wire_id),
                "wire id {wire_id} written while QEMU may still answer it"
            );
            assert!(self.in_flight.insert(id));
            self.wire_ids.insert(id, wire_id);
            self.written.push(id);
        }
        assert!(self.in_flight.len() <= MAX_IN_FLIGHT);
        true
    }

    fn deliver(&mut self, out: &mut Vec<Action<u64>>) {
        for action in out.drain(..) {
            match action {
                Action::Reply {
                    id, waiter, result, ..
                } => {
                    let index = usize::try_from(waiter).expect("small");
                    assert_eq!(
                        self.submitted[index].0, id,
                        "a reply went to another waiter"
                    );
                    assert!(result.is_ok());
                    *self.delivered.entry(id).or_default() += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn reply(&mut self, s: &mut Session<u64>, id: u64) {
        let mut out = Vec::new();
        let wire_id = self.wire_ids[&id];
        s.feed(
            format!("{{\"return\": {{}}, \"id\": {wire_id}}}\n").as_bytes(),
            &mut out,
        );
        assert!(self.in_flight.remove(&id));
        let expected = usize::from(!self.abandoned.contains(&id));
        assert_eq!(out.len(), expected, "{id}: {out:?}");
        self.deliver(&mut out);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn flow_control_invariants(ops in prop::collection::vec(op(), 1..120)) {
        let mut s = ready_session();
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Submit { fds } => {
                    let carries = fds;
                    let fds = if fds { vec![dev_null()] } else { Vec::new() };
                    // The waiter is the submission's index, to check where replies go.
                    let index = u64::try_from(m.submitted.len()).expect("small");
                    let id = s.submit(&Command::bare("q"), fds, index).expect("submit");
                    m.submitted.push((id, carries));
                }
                Op::Poll => {
                    m.poll(&mut s);
                }
                Op::Reply(i) => {
                    if !m.in_flight.is_empty() {
                        let id = *m.in_flight.iter().nth(i.index(m.in_flight.len())).expect("index");
                        m.reply(&mut s, id);
                    }
                }
                Op::Cancel(i) => {
                    let live: Vec<u64> = m.submitted.iter().map(|&(id, _)| id)
                        .filter(|id| !m.dropped.contains(id) && !m.abandoned.contains(id) && !m.delivered.contains_key(id))
                        .collect();
                    if !live.is_empty() {
                        let id = live[i.index(live.len())];
                        prop_assert!(s.cancel(id).is_some());
                        if m.written.contains(&id) {
                            m.abandoned.insert(id);
                        } else {
                            m.dropped.insert(id);
                        }
                    }
                }
            }
            prop_assert_eq!(s.in_flight(), m.in_flight.len());
            prop_assert!(s.in_flight() <= MAX_IN_FLIGHT);
        }
        // Drain: QEMU answers everything, the I/O layer writes whatever becomes ready.
        loop {
            while m.poll(&mut s) {}
            let Some(&id) = m.in_flight.iter().next() else { break };
            m.reply(&mut s, id);
        }
        prop_assert_eq!(s.queued(), 0);
        prop_assert_eq!(s.pending(), 0);
        // Written in submission order, each once, less those dropped before their turn.
        let expected: Vec<u64> = m.submitted.iter().map(|&(id, _)| id)
            .filter(|id| !m.dropped.contains(id)).collect();
        prop_assert_eq!(&m.written, &expected);
        // Answered once each, unless abandoned.
        for id in expected {
            let times = m.delivered.get(&id).copied().unwrap_or(0);
            prop_assert_eq!(times, u32::from(!m.abandoned.contains(&id)), "{}", id);
        }
    }
}
