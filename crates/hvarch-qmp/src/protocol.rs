//! The sans-IO QMP session: greeting → negotiating → ready → closed.
//!
//! [`Session`] never touches a socket or a thread. Feed it the bytes you read with
//! [`Session::feed`]; it returns [`Action`]s (greeting seen, negotiation done, a reply for a waiter,
//! an event, the session ended). Hand it commands with [`Session::submit`]; it allocates the id
//! and remembers the caller's waiter (any type `W`, e.g. a channel sender) until the reply
//! arrives, the caller gives up ([`Session::cancel`]), or the connection ends. Take what is ready
//! to be written with [`Session::poll_transmit`].
//!
//! **Ids.** Every command carries an `"id"` that QEMU echoes in its reply, and replies are
//! routed by it. A command's id for its caller ([`Session::submit`]'s) is never reused in a
//! session; the id on the wire is the smallest one no other command holds, so it stays one or
//! two digits long however long the session lives. That counts: QEMU reads monitor input one
//! byte at a time, and its throughput falls with every byte of a command. A written command
//! holds its wire id until QEMU answers it, even after its caller gave up, so a late reply is
//! never taken for another command's.
//!
//! Flow control lives here too, as the QMP specification asks of clients: at most
//! [`MAX_IN_FLIGHT`] commands await their reply at once (QEMU queues no more than 8 in-band
//! commands per monitor); the rest wait in the session's queue, in order, and become ready as
//! replies arrive. Whatever is ready is handed out as one [`Transmit`], for one `sendmsg`, except
//! that a command carrying file descriptors goes alone, with its descriptors attached, and only
//! once no other descriptors are on their way: QEMU keeps only the last descriptors it received
//! on a monitor until a command takes them, so a second set sent before the first was taken
//! would replace it.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::OwnedFd;

use serde_json::value::RawValue;
use serde_json::{json, Value};
use tracing::{debug, trace, warn};

use crate::codec::{encode_line, LineDecoder};
use crate::error::Error;
use crate::event::Event;
use crate::message::{command_error, truncate, value_of, Command, Greeting, Inbound, Parsed};

/// How many commands may await their reply at once on one connection.
pub const MAX_IN_FLIGHT: usize = 8;

/// How many commands may wait in the session's queue for a slot; [`Session::submit`] refuses
/// more (a QEMU that stops reading must not make commands and their descriptors pile up).
pub const MAX_QUEUED: usize = 1024;

/// Where the session is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the server greeting (events may arrive first and are kept).
    AwaitingGreeting,
    /// Greeting received; `qmp_capabilities` to be sent or awaiting its reply.
    Negotiating,
    /// Commands may be executed.
    Ready,
    /// The session ended (EOF, protocol error, negotiation refused, or closed locally).
    Closed,
}

/// Something the I/O layer must act on. A reply's value is a `Value` for [`Session::feed`];
/// the clients of this crate take it as raw JSON (`R`), which the caller decodes.
#[derive(Debug)]
pub enum Action<W, R = Value> {
    /// The greeting arrived; call [`Session::negotiate`] and send the bytes.
    Greeting(Greeting),
    /// `qmp_capabilities` succeeded; the session is ready.
    Ready,
    /// The reply for a command: deliver `result` to `waiter`.
    Reply {
        /// The id the command was sent with.
        id: u64,
        /// The waiter registered with [`Session::start_command`].
        waiter: W,
        /// The `return` value, or the error.
        result: Result<R, Error>,
    },
    /// An asynchronous event (including events that arrived before the greeting).
    Event(Event),
    /// The session ended with this error; every pending waiter has already been given a
    /// [`Action::Reply`] with an error. Close the socket.
    Closed(Error),
}

/// A reply's `return` value as the clients of this crate route it: raw JSON, decoded by the
/// caller into the type it asked for (outside any lock).
pub(crate) type RawReply = Box<RawValue>;

/// How an action carries a reply's value.
pub(crate) trait ReplyBody: Sized {
    fn from_raw(raw: &RawValue) -> Result<Self, Error>;
    fn from_value(value: Value) -> Result<Self, Error>;
}

impl ReplyBody for Value {
    fn from_raw(raw: &RawValue) -> Result<Self, Error> {
        value_of(raw)
    }

    fn from_value(value: Value) -> Result<Self, Error> {
        Ok(value)
    }
}

impl ReplyBody for RawReply {
    fn from_raw(raw: &RawValue) -> Result<Self, Error> {
        Ok(raw.to_owned())
    }

    fn from_value(value: Value) -> Result<Self, Error> {
        serde_json::value::to_raw_value(&value)
            .map_err(|e| Error::Protocol(format!("cannot keep a reply as JSON ({e})")))
    }
}

/// The slot of `wire_id` in [`Session`]'s table of wire ids (`None` for 0 and ids past memory).
fn wire_slot(wire_id: u64) -> Option<usize> {
    usize::try_from(wire_id.checked_sub(1)?).ok()
}

struct Pending<W> {
    command: String,
    /// The id on the wire (see the module docs).
    wire_id: u64,
    /// `None` once the caller gave up on a command already written: its late reply is dropped,
    /// but it keeps its slot until then (QEMU still holds it in its queue).
    waiter: Option<W>,
    /// Handed out by [`Session::poll_transmit`] (or [`Session::start_command`]).
    sent: bool,
    carries_fds: bool,
}

/// A command waiting in the session's queue to be written.
struct Queued {
    id: u64,
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// An inbound message as the session routes it: a reply's value already in the form the
/// actions carry.
enum Message<R> {
    Return {
        id: Option<Value>,
        value: Result<R, Error>,
    },
    Other(Inbound),
}

/// What to write next, in one `sendmsg`: the lines of one or more commands, and the file
/// descriptors to attach to the first of their bytes (a command with descriptors always goes
/// alone).
#[derive(Debug)]
pub struct Transmit {
    /// The bytes, whole lines.
    pub bytes: Vec<u8>,
    /// The descriptors to pass with SCM_RIGHTS (empty for most commands).
    pub fds: Vec<OwnedFd>,
    /// The ids of the commands in `bytes`, in order.
    pub ids: Vec<u64>,
}

/// The QMP protocol state machine. See the [module docs](self).
pub struct Session<W> {
    state: State,
    decoder: LineDecoder,
    next_id: u64,
    pending: BTreeMap<u64, Pending<W>>,
    /// Wire ids in use: slot `i` holds the id of the command that uses wire id `i + 1`.
    wire_ids: Vec<Option<u64>>,
    queue: VecDeque<Queued>,
    /// Commands written whose reply has not arrived (abandoned ones included).
    in_flight: usize,
    /// A command carrying descriptors is written and its reply has not arrived.
    fds_in_flight: bool,
    greeting: Option<Greeting>,
    negotiation_id: Option<u64>,
    enable_oob: bool,
}

impl<W> std::fmt::Debug for Session<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state)
            .field("next_id", &self.next_id)
            .field("pending", &self.pending.len())
            .field("queued", &self.queue.len())
            .field("in_flight", &self.in_flight)
            .field("greeting", &self.greeting)
            .finish_non_exhaustive()
    }
}

impl<W> Session<W> {
    /// A new session awaiting the greeting. Inbound lines longer than `max_message_size` end it;
    /// with `enable_oob` the `oob` capability is requested if the server offers it.
    pub fn new(max_message_size: usize, enable_oob: bool) -> Self {
        Session {
            state: State::AwaitingGreeting,
            decoder: LineDecoder::new(max_message_size),
            next_id: 1,
            pending: BTreeMap::new(),
            wire_ids: Vec::new(),
            queue: VecDeque::new(),
            in_flight: 0,
            fds_in_flight: false,
            greeting: None,
            negotiation_id: None,
            enable_oob,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The greeting, once received.
    pub fn greeting(&self) -> Option<&Greeting> {
        self.greeting.as_ref()
    }

    /// How many commands await a reply for a caller (queued or written; not those abandoned).
    pub fn pending(&self) -> usize {
        self.pending.values().filter(|p| p.waiter.is_some()).count()
    }

    /// How many commands are written and await their reply (abandoned ones included: QEMU still
    /// holds them). Never more than [`MAX_IN_FLIGHT`] through [`Session::poll_transmit`].
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// How many commands wait in the queue to be written.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether `oob` was (or will be) requested: asked for and offered by the greeting.
    pub fn oob(&self) -> bool {
        self.enable_oob && self.greeting.as_ref().is_some_and(Greeting::supports_oob)
    }

    /// The bytes of `qmp_capabilities` (with `enable: ["oob"]` if asked for and offered).
    pub fn negotiate(&mut self) -> Result<Vec<u8>, Error> {
        if self.state != State::Negotiating || self.negotiation_id.is_some() {
            return Err(Error::Negotiation(format!(
                "cannot negotiate in state {:?}",
                self.state
            )));
        }
        let id = self.alloc_id();
        self.negotiation_id = Some(id);
        let msg = if self.oob() {
            json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": id})
        } else {
            json!({"execute": "qmp_capabilities", "id": id})
        };
        Ok(encode_line(&msg))
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Registers `waiter` for `command` and queues it with `fds` (passed with SCM_RIGHTS when
    /// it is written); returns its id. [`Session::poll_transmit`] hands it out when its turn
    /// comes.
    ///
    /// Fails with [`Error::Disconnected`] once the session is closed, a protocol error before
    /// negotiation has finished, [`Error::InvalidArguments`] for arguments that are not an
    /// object, and an I/O error of kind `WouldBlock` when [`MAX_QUEUED`] commands already wait.
    pub fn submit(
        &mut self,
        command: &Command,
        fds: Vec<OwnedFd>,
        waiter: W,
    ) -> Result<u64, Error> {
        if self.queue.len() >= MAX_QUEUED {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("{MAX_QUEUED} QMP commands already wait to be sent (QEMU is not reading)"),
            )));
        }
        let (id, bytes) = self.register(command, !fds.is_empty(), waiter)?;
        self.queue.push_back(Queued { id, bytes, fds });
        Ok(id)
    }

    /// Registers `waiter` for `command` and returns the id and the bytes to send now, outside
    /// the queue: the command counts as written at once. For a caller that does its own flow
    /// control (and does not mix this with [`Session::submit`]).
    ///
    /// Fails with [`Error::Disconnected`] once the session is closed, or a protocol error before
    /// negotiation has finished.
    pub fn start_command(&mut self, command: &Command, waiter: W) -> Result<(u64, Vec<u8>), Error> {
        let (id, bytes) = self.register(command, false, waiter)?;
        self.mark_sent(id);
        Ok((id, bytes))
    }

    fn register(
        &mut self,
        command: &Command,
        carries_fds: bool,
        waiter: W,
    ) -> Result<(u64, Vec<u8>), Error> {
        match self.state {
            State::Ready => {}
            State::Closed => return Err(Error::Disconnected),
            other => {
                return Err(Error::Protocol(format!(
                    "cannot execute `{}` before negotiation (state {other:?})",
                    command.name
                )))
            }
        }
        let mut id = self.alloc_id();
        while self.pending.contains_key(&id) {
            id = self.alloc_id();
        }
        let wire_id = self.hold_wire_id(id);
        let bytes = match command.encode(wire_id) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.release_wire_id(wire_id);
                return Err(e);
            }
        };
        self.pending.insert(
            id,
            Pending {
                command: command.name.clone(),
                wire_id,
                waiter: Some(waiter),
                sent: false,
                carries_fds,
            },
        );
        trace!(id, command = %command.name, "QMP command registered");
        Ok((id, bytes))
    }

    /// Gives command `id` the smallest wire id no command holds, and returns it.
    fn hold_wire_id(&mut self, id: u64) -> u64 {
        let slot = match self.wire_ids.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.wire_ids.push(None);
                self.wire_ids.len() - 1
            }
        };
        self.wire_ids[slot] = Some(id);
        // A slot index plus one: at most the number of pending commands.
        slot as u64 + 1
    }

    /// Frees `wire_id` for the next command.
    fn release_wire_id(&mut self, wire_id: u64) {
        if let Some(held) = wire_slot(wire_id).and_then(|s| self.wire_ids.get_mut(s)) {
            *held = None;
        }
        while self.wire_ids.last() == Some(&None) {
            self.wire_ids.pop();
        }
    }

    /// The wire id of command `id` (what QEMU echoes in its reply).
    #[cfg(test)]
    fn wire_id(&self, id: u64) -> u64 {
        self.pending.get(&id).map_or(0, |p| p.wire_id)
    }

    /// The command that holds `wire_id`, if any.
    fn command_of_wire_id(&self, wire_id: u64) -> Option<u64> {
        *self.wire_ids.get(wire_slot(wire_id)?)?
    }

    fn mark_sent(&mut self, id: u64) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.sent = true;
            self.in_flight += 1;
            self.fds_in_flight |= p.carries_fds;
        }
    }

    /// Whether [`Session::poll_transmit`] has something to hand out.
    pub fn has_transmit(&self) -> bool {
        self.in_flight < MAX_IN_FLIGHT
            && self
                .queue
                .front()
                .is_some_and(|q| q.fds.is_empty() || !self.fds_in_flight)
    }

    /// What to write next: every queued command that may go now (up to [`MAX_IN_FLIGHT`]
    /// written), in order, as one run of bytes; or a command carrying descriptors alone, once
    /// none are on their way. The commands count as written from here on: write all of the
    /// bytes, or end the session.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let mut out: Option<Transmit> = None;
        while self.has_transmit() {
            let carries_fds = self.queue.front().is_some_and(|q| !q.fds.is_empty());
            if carries_fds && out.is_some() {
                break;
            }
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            self.mark_sent(q.id);
            match &mut out {
                Some(t) => {
                    t.bytes.extend_from_slice(&q.bytes);
                    t.ids.push(q.id);
                }
                None => {
                    out = Some(Transmit {
                        bytes: q.bytes,
                        fds: q.fds,
                        ids: vec![q.id],
                    })
                }
            }
            if carries_fds {
                break;
            }
        }
        out
    }

    /// Gives up on command `id` (timed out or abandoned). A queued command is dropped with its
    /// descriptors and never written; a written one's late reply will be dropped (it keeps its
    /// slot until then). Returns its waiter if it still had one.
    pub fn cancel(&mut self, id: u64) -> Option<W> {
        let p = self.pending.get_mut(&id)?;
        let waiter = p.waiter.take();
        if p.sent {
            debug!(id, command = %p.command, "QMP command abandoned; a late reply will be dropped");
        } else {
            debug!(id, command = %p.command, "queued QMP command abandoned before it was sent");
            let wire_id = p.wire_id;
            self.pending.remove(&id);
            self.release_wire_id(wire_id);
            self.queue.retain(|q| q.id != id);
        }
        waiter
    }

    /// Processes received bytes, appending actions to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Action<W>>) {
        self.feed_into(data, out);
    }

    /// [`Session::feed`], with replies' values kept as raw JSON.
    pub(crate) fn feed_raw(&mut self, data: &[u8], out: &mut Vec<Action<W, RawReply>>) {
        self.feed_into(data, out);
    }

    fn feed_into<R: ReplyBody>(&mut self, data: &[u8], out: &mut Vec<Action<W, R>>) {
        if self.state == State::Closed {
            return;
        }
        self.decoder.push(data);
        loop {
            let line = match self.decoder.next_line() {
                Ok(None) => return,
                Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Some(line)) => line,
                Err(oversize) => {
                    let err = Error::Protocol(oversize.to_string());
                    self.fail(err, out);
                    return;
                }
            };
            // The line borrows the decoder: take what routing needs out of it first.
            let msg = match Parsed::parse(line) {
                Ok(Parsed::Return { id, value }) => Ok(Message::Return {
                    id,
                    value: R::from_raw(value),
                }),
                Ok(Parsed::Inbound(Inbound::Return { id, value })) => Ok(Message::Return {
                    id,
                    value: R::from_value(value),
                }),
                Ok(Parsed::Inbound(other)) => Ok(Message::Other(other)),
                Err(e) => Err(e),
            };
            if let Err(e) = msg.and_then(|msg| self.handle(msg, out)) {
                self.fail(e, out);
                return;
            }
        }
    }

    /// The peer closed the connection (or reading failed): every pending command fails with
    /// [`Error::Disconnected`].
    pub fn eof(&mut self, out: &mut Vec<Action<W>>) {
        self.eof_into(out);
    }

    /// [`Session::eof`] for either form of actions.
    pub(crate) fn eof_into<R>(&mut self, out: &mut Vec<Action<W, R>>) {
        if self.state == State::Closed {
            return;
        }
        let err = match self.state {
            State::AwaitingGreeting => {
                Error::Greeting("connection closed before the greeting".into())
            }
            State::Negotiating => {
                Error::Negotiation("connection closed during capabilities negotiation".into())
            }
            _ => Error::Disconnected,
        };
        self.close_into(err, out);
    }

    /// Ends the session locally (close requested); pending commands fail with
    /// [`Error::Disconnected`].
    pub fn close(&mut self, out: &mut Vec<Action<W>>) {
        self.close_into(Error::Disconnected, out);
    }

    /// Ends the session because of `err` (e.g. a write that failed or timed out): every
    /// pending command fails with a copy of `err`. Nothing happens if it has already ended.
    pub fn close_with(&mut self, err: Error, out: &mut Vec<Action<W>>) {
        self.close_into(err, out);
    }

    /// [`Session::close_with`] for either form of actions.
    pub(crate) fn close_into<R>(&mut self, err: Error, out: &mut Vec<Action<W, R>>) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        // Queued commands are never written; their descriptors close here.
        self.queue.clear();
        self.in_flight = 0;
        self.fds_in_flight = false;
        self.wire_ids.clear();
        for (id, p) in std::mem::take(&mut self.pending) {
            if let Some(waiter) = p.waiter {
                out.push(Action::Reply {
                    id,
                    waiter,
                    result: Err(err.duplicate()),
                });
            }
        }
        out.push(Action::Closed(err));
    }

    fn fail<R>(&mut self, err: Error, out: &mut Vec<Action<W, R>>) {
        warn!(error = %err, "QMP session failed");
        self.close_into(err, out);
    }

    fn handle<R>(&mut self, msg: Message<R>, out: &mut Vec<Action<W, R>>) -> Result<(), Error> {
        let msg = match msg {
            Message::Return { id, value } => {
                self.expect_greeted()?;
                let Some(id) = id.as_ref().and_then(Value::as_u64) else {
                    warn!(id = ?id, "QMP reply with an id we never sent; dropped");
                    return Ok(());
                };
                if self.negotiation_id == Some(id) && self.state == State::Negotiating {
                    self.negotiation_id = None;
                    self.state = State::Ready;
                    out.push(Action::Ready);
                } else {
                    self.complete(id, |_| value, out);
                }
                return Ok(());
            }
            Message::Other(msg) => msg,
        };
        match msg {
            Inbound::Event(event) => {
                if self.state == State::AwaitingGreeting {
                    debug!(event = %event.name, "QMP event before the greeting; kept");
                }
                out.push(Action::Event(event));
            }
            Inbound::Greeting(g) => {
                if self.state != State::AwaitingGreeting {
                    return Err(Error::Protocol("a second QMP greeting".into()));
                }
                debug!(version = %g.version, capabilities = ?g.capabilities, "QMP greeting");
                self.greeting = Some(g.clone());
                self.state = State::Negotiating;
                out.push(Action::Greeting(g));
            }
            Inbound::Unknown(v) => {
                if self.state == State::AwaitingGreeting {
                    return Err(Error::Greeting(format!(
                        "expected the QMP greeting, got {}",
                        truncate(&v.to_string())
                    )));
                }
                debug!(message = %truncate(&v.to_string()), "unrecognised QMP message ignored");
            }
            // Routed as `Message::Return` by `feed_into`.
            Inbound::Return { .. } => {}
            Inbound::Error { id, class, desc } => {
                self.expect_greeted()?;
                let Some(id) = id else {
                    // QMP spec: an error without an id means the server could not parse input.
                    return Err(Error::Protocol(format!(
                        "server reported an input parse error: {class}: {}",
                        desc.as_deref().unwrap_or(crate::error::MISSING_DESC)
                    )));
                };
                let Some(id) = id.as_u64() else {
                    warn!(id = %id, "QMP error reply with an id we never sent; dropped");
                    return Ok(());
                };
                if self.negotiation_id == Some(id) && self.state == State::Negotiating {
                    return Err(Error::Negotiation(format!(
                        "qmp_capabilities refused: {class}: {}",
                        desc.as_deref().unwrap_or(crate::error::MISSING_DESC)
                    )));
                }
                self.complete(id, |command| Err(command_error(command, class, desc)), out);
            }
        }
        Ok(())
    }

    /// The reply carrying `wire_id` arrived: its command's slot and wire id are free again,
    /// and its waiter (if the caller has not given up) gets `result(command name)`.
    fn complete<R>(
        &mut self,
        wire_id: u64,
        result: impl FnOnce(&str) -> Result<R, Error>,
        out: &mut Vec<Action<W, R>>,
    ) {
        let id = self.command_of_wire_id(wire_id);
        let Some(id) = id.filter(|id| self.pending.get(id).is_some_and(|p| p.sent)) else {
            trace!(wire_id, "QMP reply to no command in flight dropped");
            return;
        };
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        self.release_wire_id(wire_id);
        self.in_flight = self.in_flight.saturating_sub(1);
        if p.carries_fds {
            self.fds_in_flight = false;
        }
        match p.waiter {
            Some(waiter) => {
                trace!(id, command = %p.command, "QMP reply");
                let result = result(&p.command);
                out.push(Action::Reply { id, waiter, result });
            }
            None => {
                trace!(id, command = %p.command, "late QMP reply to an abandoned command dropped")
            }
        }
    }

    fn expect_greeted(&self) -> Result<(), Error> {
        if self.state == State::AwaitingGreeting {
            return Err(Error::Greeting(
                "a reply arrived before the QMP greeting".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ids_on_the_wire;

    const GREETING: &[u8] =
        b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n";

    fn ready(oob: bool) -> Session<u32> {
        let mut s = Session::new(1024, oob);
        let mut out = Vec::new();
        s.feed(b"{\"event\": \"VSERPORT_CHANGE\", \"data\": {}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n", &mut out);
        s.feed(GREETING, &mut out);
        assert!(matches!(
            out.as_slice(),
            [Action::Event(_), Action::Greeting(_)]
        ));
        let bytes = s.negotiate().expect("negotiate");
        let sent: Value = serde_json::from_slice(&bytes).expect("json");
        if oob {
            assert_eq!(
                sent,
                json!({"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1})
            );
        } else {
            assert_eq!(sent, json!({"execute":"qmp_capabilities","id":1}));
        }
        out.clear();
        s.feed(b"{\"return\": {}, \"id\": 1}\r\n", &mut out);
        assert!(matches!(out.as_slice(), [Action::Ready]));
        assert_eq!(s.state(), State::Ready);
        s
    }

    #[test]
    fn handshake_with_and_without_oob() {
        ready(false);
        ready(true);
    }

    #[test]
    fn negotiation_refused() {
        let mut s: Session<u32> = Session::new(1024, false);
        let mut out = Vec::new();
        s.feed(GREETING, &mut out);
        s.negotiate().expect("bytes");
        out.clear();
        s.feed(
            b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": 1}\n",
            &mut out,
        );
        assert!(matches!(
            out.as_slice(),
            [Action::Closed(Error::Negotiation(_))]
        ));
        assert_eq!(s.state(), State::Closed);
    }

    #[test]
    fn out_of_order_and_late_replies() {
        let mut s = ready(false);
        let (a, _) = s.start_command(&Command::bare("a"), 10).expect("a");
        let (b, _) = s.start_command(&Command::bare("b"), 20).expect("b");
        let (c, _) = s.start_command(&Command::bare("c"), 30).expect("c");
        let [a, b, c_wire] = [a, b, c].map(|id| s.wire_id(id));
        assert_eq!(s.cancel(c), Some(30));
        let c = c_wire;
        let mut out = Vec::new();
        let input = format!(
            "{{\"return\": 2, \"id\": {b}}}\n{{\"return\": 3, \"id\": {c}}}\n{{\"error\": {{\"class\": \"X\"}}, \"id\": {a}}}\n"
        );
        s.feed(input.as_bytes(), &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            matches!(&out[0], Action::Reply { waiter: 20, result: Ok(v), .. } if *v == json!(2))
        );
        assert!(
            matches!(&out[1], Action::Reply { waiter: 10, result: Err(Error::Command { class, .. }), .. } if class == "X")
        );
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn error_without_id_is_fatal() {
        let mut s = ready(false);
        s.start_command(&Command::bare("a"), 1).expect("a");
        let mut out = Vec::new();
        s.feed(
            b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\n",
            &mut out,
        );
        // The waiter and the session get the same error, which says its prefix once.
        const SAID: &str =
            "QMP protocol error: server reported an input parse error: GenericError: JSON parse error";
        match &out[0] {
            Action::Reply {
                waiter: 1,
                result: Err(e @ Error::Protocol(_)),
                ..
            } => assert_eq!(e.to_string(), SAID),
            other => panic!("{other:?}"),
        }
        match &out[1] {
            Action::Closed(e @ Error::Protocol(_)) => assert_eq!(e.to_string(), SAID),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.start_command(&Command::bare("b"), 2),
            Err(Error::Disconnected)
        ));
    }

    #[test]
    fn eof_fails_pending() {
        let mut s = ready(false);
        s.start_command(&Command::bare("a"), 1).expect("a");
        s.start_command(&Command::bare("b"), 2).expect("b");
        let mut out = Vec::new();
        s.eof(&mut out);
        assert_eq!(out.len(), 3);
        assert!(out.iter().take(2).all(|a| matches!(
            a,
            Action::Reply {
                result: Err(Error::Disconnected),
                ..
            }
        )));
    }

    #[test]
    fn oversize_and_garbage_end_session() {
        let mut s = ready(false);
        let mut out = Vec::new();
        s.feed(&[b'x'; 2000], &mut out);
        assert!(
            matches!(out.as_slice(), [Action::Closed(Error::Protocol(m))] if m.contains("maximum size"))
        );
        let mut s = ready(false);
        out.clear();
        s.feed(b"not json\n", &mut out);
        assert!(matches!(
            out.as_slice(),
            [Action::Closed(Error::Protocol(_))]
        ));
    }

    fn reply(id: u64) -> Vec<u8> {
        format!("{{\"return\": {{}}, \"id\": {id}}}\n").into_bytes()
    }

    fn dev_null() -> OwnedFd {
        std::fs::File::open("/dev/null")
            .expect("open /dev/null")
            .into()
    }

    #[test]
    fn ninth_command_waits_for_a_slot() {
        let mut s = ready(true);
        let ids: Vec<u64> = (0..9)
            .map(|i| {
                s.submit(&Command::bare("q"), Vec::new(), i)
                    .expect("submit")
            })
            .collect();
        // The first eight go out together, as one run of lines.
        let t = s.poll_transmit().expect("transmit");
        assert_eq!(t.ids, ids[..8]);
        assert_eq!(t.bytes.iter().filter(|&&b| b == b'\n').count(), 8);
        assert_eq!((s.in_flight(), s.queued()), (8, 1));
        assert!(!s.has_transmit());
        assert!(s.poll_transmit().is_none());
        // A reply frees a slot for the ninth.
        let mut out = Vec::new();
        s.feed(&reply(s.wire_id(ids[3])), &mut out);
        assert!(matches!(out.as_slice(), [Action::Reply { waiter: 3, .. }]));
        let t = s.poll_transmit().expect("the ninth");
        assert_eq!(t.ids, [ids[8]]);
        assert_eq!(s.in_flight(), 8);
    }

    #[test]
    fn descriptors_go_alone_and_one_set_at_a_time() {
        let mut s = ready(true);
        let a = s.submit(&Command::bare("a"), Vec::new(), 0).expect("a");
        let b = s
            .submit(&Command::bare("b"), vec![dev_null()], 1)
            .expect("b");
        let c = s.submit(&Command::bare("c"), Vec::new(), 2).expect("c");
        let d = s
            .submit(&Command::bare("d"), vec![dev_null()], 3)
            .expect("d");
        let e = s.submit(&Command::bare("e"), Vec::new(), 4).expect("e");
        let t = s.poll_transmit().expect("a");
        assert_eq!((t.ids.as_slice(), t.fds.len()), ([a].as_slice(), 0));
        let t = s.poll_transmit().expect("b");
        assert_eq!((t.ids.as_slice(), t.fds.len()), ([b].as_slice(), 1));
        let t = s.poll_transmit().expect("c");
        assert_eq!((t.ids.as_slice(), t.fds.len()), ([c].as_slice(), 0));
        // d waits until QEMU took b's descriptor (b's reply), and e waits behind d.
        assert!(s.poll_transmit().is_none());
        let mut out = Vec::new();
        s.feed(&reply(s.wire_id(a)), &mut out);
        assert!(s.poll_transmit().is_none());
        s.feed(&reply(s.wire_id(b)), &mut out);
        let t = s.poll_transmit().expect("d");
        assert_eq!((t.ids.as_slice(), t.fds.len()), ([d].as_slice(), 1));
        let t = s.poll_transmit().expect("e");
        assert_eq!(t.ids, [e]);
    }

    #[test]
    fn cancel_drops_a_queued_command_and_keeps_a_written_ones_slot() {
        let mut s = ready(false);
        let (watch, passed) = std::os::unix::net::UnixStream::pair().expect("pair");
        let written = s.submit(&Command::bare("w"), Vec::new(), 1).expect("w");
        assert_eq!(s.poll_transmit().expect("w").ids, [written]);
        let queued = s
            .submit(&Command::bare("q"), vec![OwnedFd::from(passed)], 2)
            .expect("q");
        // Queued: gone, never written, its descriptor closed.
        assert_eq!(s.cancel(queued), Some(2));
        assert_eq!(s.queued(), 0);
        assert!(s.poll_transmit().is_none());
        watch.set_nonblocking(true).expect("nonblocking");
        let mut byte = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &watch, &mut byte).expect("EOF"), 0);
        // Written: the caller is released, the slot stays until the late reply.
        let written_wire = s.wire_id(written);
        assert_eq!(s.cancel(written), Some(1));
        assert_eq!((s.in_flight(), s.pending()), (1, 0));
        let mut out = Vec::new();
        s.feed(&reply(written_wire), &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(s.in_flight(), 0);
        // A reply to a command never written (or unknown) changes nothing.
        let later = s.submit(&Command::bare("l"), Vec::new(), 3).expect("l");
        s.feed(&reply(s.wire_id(later)), &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!((s.queued(), s.pending()), (1, 1));
    }

    #[test]
    fn the_queue_is_bounded_and_closing_drops_it() {
        let mut s = ready(false);
        for i in 0..MAX_QUEUED {
            let i = u32::try_from(i).expect("small");
            s.submit(&Command::bare("q"), Vec::new(), i).expect("room");
        }
        let err = s
            .submit(&Command::bare("one-too-many"), Vec::new(), 0)
            .expect_err("full");
        assert!(
            matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{err}"
        );
        let mut out = Vec::new();
        s.close(&mut out);
        assert_eq!(out.len(), MAX_QUEUED + 1);
        assert_eq!((s.queued(), s.in_flight()), (0, 0));
        assert!(s.poll_transmit().is_none());
    }

    /// Any JSON value, strings with escapes and non-ASCII text included.
    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            "[ -~\\n\\t\"\\\\é\u{1F600}]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z\"]{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// However many commands a session has run, a lone caller's command goes out as `1`.
    #[test]
    fn a_long_session_keeps_using_the_first_wire_id() {
        let mut s = ready(true);
        let mut out = Vec::new();
        for i in 0..10_000 {
            s.submit(&Command::bare("q"), Vec::new(), i)
                .expect("submit");
            let t = s.poll_transmit().expect("transmit");
            assert_eq!(ids_on_the_wire(&t.bytes), [1]);
            s.feed(&reply(1), &mut out);
        }
        assert_eq!(out.len(), 10_000);
    }

    #[test]
    fn a_command_refused_before_it_is_queued_holds_no_wire_id() {
        let mut s = ready(true);
        let refused = Command::new("x", json!([1]));
        assert!(matches!(
            s.submit(&refused, Vec::new(), 1),
            Err(Error::InvalidArguments { .. })
        ));
        s.submit(&Command::bare("q"), Vec::new(), 2).expect("q");
        assert_eq!(ids_on_the_wire(&s.poll_transmit().expect("w").bytes), [1]);
    }

    #[test]
    fn an_abandoned_command_keeps_its_wire_id_until_qemu_answers() {
        let mut s = ready(true);
        let mut out = Vec::new();
        let slow = s
            .submit(&Command::bare("slow"), Vec::new(), 1)
            .expect("slow");
        assert_eq!(ids_on_the_wire(&s.poll_transmit().expect("w").bytes), [1]);
        assert_eq!(s.cancel(slow), Some(1));
        s.submit(&Command::bare("next"), Vec::new(), 2)
            .expect("next");
        assert_eq!(ids_on_the_wire(&s.poll_transmit().expect("w").bytes), [2]);
        // The late reply is dropped, not taken for `next`'s; then wire id 1 is free again.
        s.feed(&reply(1), &mut out);
        assert!(out.is_empty(), "{out:?}");
        s.submit(&Command::bare("after"), Vec::new(), 3)
            .expect("after");
        assert_eq!(ids_on_the_wire(&s.poll_transmit().expect("w").bytes), [1]);
        s.feed(&reply(2), &mut out);
        s.feed(&reply(1), &mut out);
        let waiters: Vec<u32> = out
            .iter()
            .filter_map(|a| match a {
                Action::Reply { waiter, .. } => Some(*waiter),
                _ => None,
            })
            .collect();
        assert_eq!(waiters, [2, 3]);
    }

    /// One step of a client's life with QEMU, for the wire id model below.
    #[derive(Debug, Clone)]
    enum Step {
        Submit,
        Transmit,
        /// QEMU answers the written command at this index (modulo) of those it holds.
        Answer(usize),
        /// The caller gives up on the command at this index (modulo) of those with a caller.
        Cancel(usize),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            3 => Just(Step::Submit),
            3 => Just(Step::Transmit),
            3 => any::<usize>().prop_map(Step::Answer),
            1 => any::<usize>().prop_map(Step::Cancel),
        ]
    }

    proptest::proptest! {
        /// Whatever commands are submitted, written, answered (in any order) and abandoned: a
        /// reply reaches the caller of the command whose bytes carried its id, or nobody if
        /// that caller gave up; no two commands QEMU may still answer share a wire id; and a
        /// new command's wire id is never larger than the number of commands holding one.
        #[test]
        fn replies_reach_the_command_whose_bytes_carried_the_id(
            steps in proptest::collection::vec(step(), 1..120),
        ) {
            let mut s = ready(true);
            let mut next_waiter = 0u32;
            // What QEMU holds: (wire id, waiter) of every written, unanswered command.
            let mut qemu: Vec<(u64, u32)> = Vec::new();
            // Commands with a caller: (id, waiter).
            let mut callers: Vec<(u64, u32)> = Vec::new();
            let mut waiters_by_id = std::collections::HashMap::new();
            for step in steps {
                let mut out = Vec::new();
                match step {
                    Step::Submit => {
                        if let Ok(id) = s.submit(&Command::bare("q"), Vec::new(), next_waiter) {
                            // The smallest free wire id: never above the number of holders.
                            proptest::prop_assert!(
                                s.wire_id(id) as usize <= s.pending.len(),
                                "wire id {} for {} commands", s.wire_id(id), s.pending.len()
                            );
                            callers.push((id, next_waiter));
                            waiters_by_id.insert(id, next_waiter);
                            next_waiter += 1;
                        }
                    }
                    Step::Transmit => {
                        if let Some(t) = s.poll_transmit() {
                            let wire = ids_on_the_wire(&t.bytes);
                            proptest::prop_assert_eq!(wire.len(), t.ids.len());
                            for (w, id) in wire.into_iter().zip(&t.ids) {
                                proptest::prop_assert!(
                                    qemu.iter().all(|(held, _)| *held != w),
                                    "wire id {} written while QEMU may still answer it", w
                                );
                                qemu.push((w, waiters_by_id[id]));
                            }
                        }
                    }
                    Step::Answer(i) if !qemu.is_empty() => {
                        let (w, waiter) = qemu.remove(i % qemu.len());
                        s.feed(&reply(w), &mut out);
                        let still_waiting = callers.iter().any(|(_, c)| *c == waiter);
                        match out.as_slice() {
                            [Action::Reply { waiter: got, .. }] => {
                                proptest::prop_assert!(still_waiting);
                                proptest::prop_assert_eq!(*got, waiter);
                                callers.retain(|(_, c)| *c != waiter);
                            }
                            [] => proptest::prop_assert!(!still_waiting, "reply lost"),
                            other => proptest::prop_assert!(false, "{:?}", other),
                        }
                    }
                    Step::Answer(_) => {}
                    Step::Cancel(i) if !callers.is_empty() => {
                        let (id, waiter) = callers.remove(i % callers.len());
                        proptest::prop_assert_eq!(s.cancel(id), Some(waiter));
                    }
                    Step::Cancel(_) => {}
                }
            }
        }

        /// The clients' raw routing (`feed_raw`) hands every reply's value over exactly as the
        /// `Value` routing (`feed`) does, to the same waiter, whatever the value and whether the
        /// line takes the fast path or the general one (a member that is not a reply's, such as
        /// `"event": null`).
        #[test]
        fn raw_replies_carry_the_same_values(
            values in proptest::collection::vec((json_value(), proptest::bool::ANY), 1..8),
        ) {
            let mut parsed = ready(false);
            let mut raw = ready(false);
            let mut input = Vec::new();
            for (i, (value, general)) in values.iter().enumerate() {
                let waiter = u32::try_from(i).expect("small");
                let (id, _) = parsed.start_command(&Command::bare("c"), waiter).expect("parsed");
                let (raw_id, _) = raw.start_command(&Command::bare("c"), waiter).expect("raw");
                proptest::prop_assert_eq!(id, raw_id);
                let id = parsed.wire_id(id);
                let line = if *general {
                    json!({"event": null, "id": id, "return": value})
                } else {
                    json!({"return": value, "id": id})
                };
                input.extend_from_slice(line.to_string().as_bytes());
                input.extend_from_slice(b"\r\n");
            }
            let (mut by_value, mut by_raw) = (Vec::new(), Vec::new());
            parsed.feed(&input, &mut by_value);
            raw.feed_raw(&input, &mut by_raw);
            proptest::prop_assert_eq!(by_value.len(), values.len());
            proptest::prop_assert_eq!(by_raw.len(), values.len());
            for (i, (v, r)) in by_value.iter().zip(&by_raw).enumerate() {
                let (
                    Action::Reply { waiter: wv, result: Ok(v), .. },
                    Action::Reply { waiter: wr, result: Ok(r), .. },
                ) = (v, r) else {
                    return Err(proptest::test_runner::TestCaseError::fail(format!(
                        "reply {i}: {v:?} / {r:?}"
                    )));
                };
                let decoded: Value = serde_json::from_str(r.get()).expect("raw reply is JSON");
                proptest::prop_assert_eq!((wv, v), (wr, &decoded));
                proptest::prop_assert_eq!(*wv, u32::try_from(i).expect("small"));
            }
        }
    }

    #[test]
    fn reply_before_greeting_is_greeting_error() {
        let mut s: Session<u32> = Session::new(1024, false);
        let mut out = Vec::new();
        s.feed(b"{\"return\": {}}\n", &mut out);
        assert!(matches!(
            out.as_slice(),
            [Action::Closed(Error::Greeting(_))]
        ));
    }
}
