//! The sans-IO QMP session: greeting → negotiating → ready → closed.
//!
//! [`Session`] never touches a socket or a thread. Feed it the bytes you read with
//! [`Session::feed`]; it returns [`Action`]s (greeting seen, negotiation done, a reply for a waiter,
//! an event, the session ended). Ask it for the bytes of a command with [`Session::start_command`];
//! it allocates the id and remembers the caller's waiter (any type `W`, e.g. a channel sender) until
//! the reply arrives, the caller gives up ([`Session::cancel`]), or the connection ends.

use std::collections::HashMap;

use serde_json::{json, Value};
use tracing::{debug, trace, warn};

use crate::codec::{encode_line, LineDecoder};
use crate::error::Error;
use crate::event::Event;
use crate::message::{command_error, truncate, Command, Greeting, Inbound};

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

/// Something the I/O layer must act on.
#[derive(Debug)]
pub enum Action<W> {
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
        result: Result<Value, Error>,
    },
    /// An asynchronous event (including events that arrived before the greeting).
    Event(Event),
    /// The session ended with this error; every pending waiter has already been given a
    /// [`Action::Reply`] with an error. Close the socket.
    Closed(Error),
}

struct Pending<W> {
    command: String,
    waiter: W,
}

/// The QMP protocol state machine. See the [module docs](self).
pub struct Session<W> {
    state: State,
    decoder: LineDecoder,
    next_id: u64,
    pending: HashMap<u64, Pending<W>>,
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
            pending: HashMap::new(),
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

    /// How many commands await a reply.
    pub fn pending(&self) -> usize {
        self.pending.len()
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
        let oob = self.enable_oob && self.greeting.as_ref().is_some_and(Greeting::supports_oob);
        let msg = if oob {
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

    /// Registers `waiter` for `command` and returns the id and the bytes to send.
    ///
    /// Fails with [`Error::Disconnected`] once the session is closed, or a protocol error before
    /// negotiation has finished.
    pub fn start_command(&mut self, command: &Command, waiter: W) -> Result<(u64, Vec<u8>), Error> {
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
        let bytes = encode_line(&command.to_message(id)?);
        self.pending.insert(
            id,
            Pending {
                command: command.name.clone(),
                waiter,
            },
        );
        trace!(id, command = %command.name, "QMP command registered");
        Ok((id, bytes))
    }

    /// Forgets command `id` (timed out or abandoned); a late reply to it will be dropped.
    /// Returns its waiter if it was still pending.
    pub fn cancel(&mut self, id: u64) -> Option<W> {
        self.pending.remove(&id).map(|p| {
            debug!(id, command = %p.command, "QMP command abandoned; a late reply will be dropped");
            p.waiter
        })
    }

    /// Processes received bytes, appending actions to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Action<W>>) {
        if self.state == State::Closed {
            return;
        }
        self.decoder.push(data);
        loop {
            let inbound = match self.decoder.next_line() {
                Ok(None) => return,
                Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Some(line)) => Inbound::decode(line),
                Err(oversize) => Err(Error::Protocol(oversize.to_string())),
            };
            let result = inbound.and_then(|msg| self.handle(msg, out));
            if let Err(e) = result {
                self.fail(e, out);
                return;
            }
        }
    }

    /// The peer closed the connection (or reading failed): every pending command fails with
    /// [`Error::Disconnected`].
    pub fn eof(&mut self, out: &mut Vec<Action<W>>) {
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
        self.close_with(err, out);
    }

    /// Ends the session locally (close requested); pending commands fail with
    /// [`Error::Disconnected`].
    pub fn close(&mut self, out: &mut Vec<Action<W>>) {
        self.close_with(Error::Disconnected, out);
    }

    /// Ends the session because of `err` (e.g. a write that failed or timed out): every
    /// pending command fails with a copy of `err`. Nothing happens if it has already ended.
    pub fn close_with(&mut self, err: Error, out: &mut Vec<Action<W>>) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        let mut pending: Vec<_> = self.pending.drain().collect();
        pending.sort_by_key(|(id, _)| *id);
        for (id, p) in pending {
            out.push(Action::Reply {
                id,
                waiter: p.waiter,
                result: Err(err.duplicate()),
            });
        }
        out.push(Action::Closed(err));
    }

    fn fail(&mut self, err: Error, out: &mut Vec<Action<W>>) {
        warn!(error = %err, "QMP session failed");
        self.close_with(err, out);
    }

    fn handle(&mut self, msg: Inbound, out: &mut Vec<Action<W>>) -> Result<(), Error> {
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
            Inbound::Return { id, value } => {
                self.expect_greeted()?;
                let Some(id) = id.as_ref().and_then(Value::as_u64) else {
                    warn!(id = ?id, "QMP reply with an id we never sent; dropped");
                    return Ok(());
                };
                if self.negotiation_id == Some(id) && self.state == State::Negotiating {
                    self.negotiation_id = None;
                    self.state = State::Ready;
                    out.push(Action::Ready);
                } else if let Some(p) = self.pending.remove(&id) {
                    trace!(id, command = %p.command, "QMP reply");
                    out.push(Action::Reply {
                        id,
                        waiter: p.waiter,
                        result: Ok(value),
                    });
                } else {
                    trace!(id, "late or unknown QMP reply dropped");
                }
            }
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
                if let Some(p) = self.pending.remove(&id) {
                    trace!(id, command = %p.command, %class, "QMP error reply");
                    let err = command_error(&p.command, class, desc);
                    out.push(Action::Reply {
                        id,
                        waiter: p.waiter,
                        result: Err(err),
                    });
                } else {
                    trace!(id, "late or unknown QMP error reply dropped");
                }
            }
        }
        Ok(())
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
        assert_eq!(s.cancel(c), Some(30));
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
