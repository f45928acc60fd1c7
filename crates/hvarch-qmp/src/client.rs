//! What the blocking [`Qmp`](crate::Qmp) and the async [`AsyncQmp`](crate::AsyncQmp) share:
//! the negotiated connection's facts (greeting, configuration, early events), its state under
//! one lock (the session, the subscribers), how the session's actions are carried out, and the
//! helpers that turn replies into values. Each client adds only how it waits and does I/O.

use std::net::Shutdown;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use serde_json::Value;
use tracing::{debug, trace};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::event::{Event, EventFilter};
use crate::message::Greeting;
use crate::protocol::{Action, RawReply, Session, State};

/// Locks `m`, recovering from poisoning: the state behind every lock of this crate stays
/// consistent across a panic (no invariant is broken half-way by code that can panic).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a command's result goes: a one-shot channel of the client's flavour. The reply's value
/// stays raw JSON until the caller decodes it, outside the connection's lock.
pub(crate) trait Waiter: Sized {
    /// Hands over the result; never blocks (a caller that gave up simply does not receive it).
    /// Runs under the connection's lock: a caller asleep is not woken here, but returned, for
    /// [`Waiter::wake`] once the lock is let go (it would otherwise wake to wait for the lock,
    /// and the lock be held through a system call).
    fn deliver(self, result: Result<RawReply>) -> Option<Self>;

    /// Wakes the caller a delivery returned.
    fn wake(self);
}

/// Where a subscriber's events go.
pub(crate) trait EventSink {
    /// Queues `event`; `false` once the subscriber is gone.
    fn send(&self, event: Event) -> bool;
}

struct Subscriber<S> {
    id: u64,
    filter: EventFilter,
    sink: S,
}

/// The connection's mutable state, behind [`Connection::state`]: the protocol session, the
/// subscribers.
pub(crate) struct Link<W, S> {
    pub(crate) session: Session<W>,
    subscribers: Vec<Subscriber<S>>,
    next_subscriber: u64,
    /// Callers delivered to and still asleep: woken by [`LinkGuard`] after the lock is let go.
    wakes: Vec<W>,
}

/// The connection's state, locked ([`Connection::link`]). Letting go of it wakes the callers
/// whose results were delivered under it, once the lock is released.
pub(crate) struct LinkGuard<'a, W: Waiter, S> {
    // Fields drop in this order: the lock is released, then the callers are woken.
    guard: MutexGuard<'a, Link<W, S>>,
    wakes: Wakes<W>,
}

/// Callers to wake, on drop.
struct Wakes<W: Waiter>(Vec<W>);

impl<W: Waiter> Drop for Wakes<W> {
    fn drop(&mut self) {
        for waiter in self.0.drain(..) {
            waiter.wake();
        }
    }
}

impl<'a, W: Waiter, S> LinkGuard<'a, W, S> {
    /// Locks `state`.
    fn new(state: &'a Mutex<Link<W, S>>) -> Self {
        LinkGuard {
            guard: lock(state),
            wakes: Wakes(Vec::new()),
        }
    }
}

impl<W: Waiter, S> Drop for LinkGuard<'_, W, S> {
    fn drop(&mut self) {
        std::mem::swap(&mut self.wakes.0, &mut self.guard.wakes);
    }
}

impl<W: Waiter, S> std::ops::Deref for LinkGuard<'_, W, S> {
    type Target = Link<W, S>;

    fn deref(&self) -> &Link<W, S> {
        &self.guard
    }
}

impl<W: Waiter, S> std::ops::DerefMut for LinkGuard<'_, W, S> {
    fn deref_mut(&mut self) -> &mut Link<W, S> {
        &mut self.guard
    }
}

impl<W: Waiter, S: EventSink> Link<W, S> {
    /// Carries out what the session produced: replies to their waiters, events to the
    /// subscribers whose filter they pass. Runs in the critical section that fed the session, so
    /// a caller that times out meanwhile either finds its reply delivered or cancelled before it
    /// was routed, never neither. Returns whether the session closed.
    pub(crate) fn dispatch(&mut self, actions: &mut Vec<Action<W, RawReply>>) -> bool {
        let mut closed = false;
        for action in actions.drain(..) {
            match action {
                Action::Event(event) => {
                    trace!(event = %event.name, "QMP event");
                    self.subscribers
                        .retain(|s| !s.filter.matches(&event) || s.sink.send(event.clone()));
                }
                Action::Reply { waiter, result, .. } => {
                    crate::testing::reply_routed();
                    if let Some(asleep) = waiter.deliver(result) {
                        self.wakes.push(asleep);
                    }
                }
                Action::Closed(err) => {
                    debug!(reason = %err, "QMP session closed");
                    // Dropping the sinks ends every subscription.
                    self.subscribers.clear();
                    closed = true;
                }
                Action::Greeting(_) | Action::Ready => {}
            }
        }
        closed
    }

    /// Feeds what a read returned (no bytes or an error: the end of the stream) to the session
    /// and carries out its actions, in one critical section. Returns whether the session is
    /// closed (by this read, or earlier by a failed write or `close`).
    pub(crate) fn on_read(
        &mut self,
        read: std::io::Result<&[u8]>,
        actions: &mut Vec<Action<W, RawReply>>,
    ) -> bool {
        match read {
            Ok([]) => self.session.eof_into(actions),
            Ok(bytes) => self.session.feed_raw(bytes, actions),
            Err(e) => {
                debug!(error = %e, "QMP read failed");
                self.session.eof_into(actions);
            }
        }
        self.dispatch(actions) || self.session.state() == State::Closed
    }

    /// Adds a subscriber; returns its id. A closed connection gets none: its subscription sees
    /// the disconnection at once.
    fn subscribe(&mut self, filter: EventFilter, sink: S) -> u64 {
        let id = self.next_subscriber;
        self.next_subscriber += 1;
        if self.session.state() != State::Closed {
            self.subscribers.push(Subscriber { id, filter, sink });
        }
        id
    }

    /// Removes subscriber `id` (a dropped subscription).
    fn unsubscribe(&mut self, id: u64) {
        self.subscribers.retain(|s| s.id != id);
    }

    /// Ends the session with `err`: every pending command fails with it, subscriptions end.
    pub(crate) fn end(&mut self, err: Error) {
        let mut actions = Vec::new();
        self.session.close_into(err, &mut actions);
        self.dispatch(&mut actions);
    }
}

/// A negotiated QMP connection as both clients hold it.
pub(crate) struct Connection<W, S> {
    /// The state that changes, locked by [`Connection::link`]: for as short as possible (never
    /// across I/O that waits).
    state: Mutex<Link<W, S>>,
    greeting: Greeting,
    config: Config,
    /// Whether `oob` was negotiated.
    oob: bool,
    early_events: Mutex<Vec<Event>>,
    connected: AtomicBool,
    /// Live subscriptions (registrations not dropped yet), readable without the state's lock.
    subscriptions: AtomicUsize,
    /// A dup of the socket used only to shut it down (wakes every thread or task blocked on it).
    control: UnixStream,
}

impl<W: Waiter, S: EventSink> Connection<W, S> {
    /// A connection whose `session` has negotiated.
    pub(crate) fn new(negotiated: Negotiated<W>, control: UnixStream, config: &Config) -> Self {
        let oob = negotiated.session.oob();
        Connection {
            state: Mutex::new(Link {
                session: negotiated.session,
                subscribers: Vec::new(),
                next_subscriber: 1,
                wakes: Vec::new(),
            }),
            greeting: negotiated.greeting,
            config: config.clone(),
            oob,
            early_events: Mutex::new(negotiated.early_events),
            connected: AtomicBool::new(true),
            subscriptions: AtomicUsize::new(0),
            control,
        }
    }

    /// Locks the connection's state. Callers a delivery under it left asleep are woken when it
    /// is let go.
    pub(crate) fn link(&self) -> LinkGuard<'_, W, S> {
        LinkGuard::new(&self.state)
    }

    pub(crate) fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn oob(&self) -> bool {
        self.oob
    }

    pub(crate) fn take_early_events(&self) -> Vec<Event> {
        std::mem::take(&mut *lock(&self.early_events))
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst) && self.link().session.state() == State::Ready
    }

    /// `Debug` for a client called `name` holding this connection.
    pub(crate) fn fmt_client(
        &self,
        name: &str,
        f: &mut std::fmt::Formatter<'_>,
    ) -> std::fmt::Result {
        f.debug_struct(name)
            .field("version", &self.greeting.version)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }

    /// Whether [`Connection::shutdown`] ran (the session may still be draining).
    pub(crate) fn is_shut_down(&self) -> bool {
        !self.connected.load(Ordering::SeqCst)
    }

    /// Shuts the socket down: every blocked read and write returns, `is_connected` is false.
    pub(crate) fn shutdown(&self) {
        self.connected.store(false, Ordering::SeqCst);
        let _ = self.control.shutdown(Shutdown::Both);
    }

    /// Ends the session with `err` and shuts the socket down. In that order: every pending
    /// command fails with `err`, not with the end of stream the shutdown makes a reader see.
    pub(crate) fn end(&self, err: Error) {
        self.link().end(err);
        self.shutdown();
    }

    /// After a write found the peer gone (a QEMU that exited after its last events): delivers
    /// what it sent before it went and nobody has read yet, reading `socket` without waiting
    /// until it has nothing more to give, so no event or reply is lost to the failed write.
    /// A syscall each time: an async runtime may not know yet that the socket is readable.
    pub(crate) fn read_what_is_left(
        &self,
        socket: BorrowedFd<'_>,
        buf: &mut [u8],
        actions: &mut Vec<Action<W, RawReply>>,
    ) {
        loop {
            match crate::sys::recv_now(socket, buf) {
                Ok(n) if n > 0 => {
                    let bytes = buf.get(..n).unwrap_or_default();
                    if self.link().on_read(Ok(bytes), actions) {
                        return;
                    }
                }
                // The end of the stream, nothing more yet, or an error: the session ends.
                _ => return,
            }
        }
    }

    /// Whether any subscription is live: events then have somewhere to go, and should be read
    /// as they come.
    pub(crate) fn has_subscriptions(&self) -> bool {
        self.subscriptions.load(Ordering::SeqCst) > 0
    }

    /// Registers `sink` for the events matching `filter`, until the registration is dropped.
    pub(crate) fn subscribe(self: &Arc<Self>, filter: EventFilter, sink: S) -> Registration<W, S> {
        self.subscriptions.fetch_add(1, Ordering::SeqCst);
        Registration {
            id: self.link().subscribe(filter, sink),
            conn: Arc::downgrade(self),
        }
    }
}

/// A subscriber's place in a [`Connection`]; dropping it unsubscribes.
pub(crate) struct Registration<W: Waiter, S: EventSink> {
    id: u64,
    conn: Weak<Connection<W, S>>,
}

impl<W: Waiter, S: EventSink> Drop for Registration<W, S> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.upgrade() {
            conn.link().unsubscribe(self.id);
            conn.subscriptions.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl<W: Waiter, S: EventSink> std::fmt::Debug for Registration<W, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .finish()
    }
}

/// The outcome of the greeting and `qmp_capabilities`.
pub(crate) struct Negotiated<W> {
    pub(crate) session: Session<W>,
    pub(crate) greeting: Greeting,
    /// Events read before the session was ready (before the greeting or with the negotiation
    /// reply).
    pub(crate) early_events: Vec<Event>,
}

/// The greeting and `qmp_capabilities`, sans I/O: feed it what is read, send what it returns,
/// until it is [`done`](Handshake::done).
pub(crate) struct Handshake<W> {
    session: Session<W>,
    actions: Vec<Action<W, RawReply>>,
    greeting: Option<Greeting>,
    early_events: Vec<Event>,
    ready: bool,
}

impl<W> Handshake<W> {
    pub(crate) fn new(config: &Config) -> Self {
        Handshake {
            session: Session::new(config.max_message_size, config.enable_oob),
            actions: Vec::new(),
            greeting: None,
            early_events: Vec::new(),
            ready: false,
        }
    }

    /// Takes what was read (`None`: the peer closed). Returns the bytes of `qmp_capabilities`
    /// to send once the greeting has arrived.
    pub(crate) fn on_read(&mut self, read: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        match read {
            Some(bytes) => self.session.feed_raw(bytes, &mut self.actions),
            None => self.session.eof_into(&mut self.actions),
        }
        let mut send = None;
        for action in self.actions.drain(..) {
            match action {
                Action::Greeting(g) => {
                    self.greeting = Some(g);
                    send = Some(self.session.negotiate()?);
                }
                Action::Ready => self.ready = true,
                // Events read along with the negotiation reply are kept too.
                Action::Event(e) => self.early_events.push(e),
                Action::Reply { .. } => {}
                Action::Closed(err) => return Err(err),
            }
        }
        Ok(send)
    }

    /// Whether `qmp_capabilities` succeeded.
    pub(crate) fn is_done(&self) -> bool {
        self.ready && self.greeting.is_some()
    }

    /// The negotiated session (once [`is_done`](Handshake::is_done)).
    pub(crate) fn finish(self) -> Result<Negotiated<W>> {
        match (self.ready, self.greeting) {
            (true, Some(greeting)) => Ok(Negotiated {
                session: self.session,
                greeting,
                early_events: self.early_events,
            }),
            _ => Err(Error::Negotiation("the handshake has not finished".into())),
        }
    }
}

/// The accessors both clients have, delegating to their [`Connection`] (`self.connection()`).
macro_rules! connection_accessors {
    () => {
        /// The server greeting.
        pub fn greeting(&self) -> &$crate::Greeting {
            self.connection().greeting()
        }

        /// QEMU's version, from the greeting.
        pub fn version(&self) -> $crate::QemuVersion {
            self.connection().greeting().version
        }

        /// The configuration in use.
        pub fn config(&self) -> &$crate::Config {
            self.connection().config()
        }

        /// Whether the `oob` capability was negotiated (asked for by
        /// [`Config::enable_oob`](crate::Config::enable_oob) and offered by QEMU).
        pub fn oob(&self) -> bool {
            self.connection().oob()
        }

        /// Events that arrived before the greeting or during negotiation (taken once).
        pub fn take_early_events(&self) -> Vec<$crate::Event> {
            self.connection().take_early_events()
        }

        /// Whether the connection is open and negotiated.
        pub fn is_connected(&self) -> bool {
            self.connection().is_connected()
        }
    };
}
pub(crate) use connection_accessors;

/// The command helpers both clients have, written once over each client's own
/// `execute_with_timeout`, `execute_with_fds` and `subscribe_filtered`. The blocking client
/// invokes `command_helpers!(EventSubscription, [], [])`, the async one
/// `command_helpers!(AsyncEventSubscription, [async], [.await])`: the bodies are the same, only
/// whether a call is awaited differs.
macro_rules! command_helpers {
    ($subscription:ty, [$($async_:tt)?], [$(.$await_:tt)?]) => {
        /// Executes a typed qapi-qmp command with the default timeout and decodes its reply.
        pub $($async_)? fn execute<C: qapi_spec::Command>(
            &self,
            command: &C,
        ) -> $crate::Result<C::Ok> {
            let command = $crate::Command::from_typed(command)?;
            let timeout = self.config().command_timeout;
            let reply = self.execute_with_fds(&command, timeout, Vec::new())$(.$await_)??;
            $crate::client::decode_reply(C::NAME, &reply)
        }

        /// Executes `name` with raw JSON `arguments` (`Value::Null` or `{}` for none).
        pub $($async_)? fn execute_raw(
            &self,
            name: &str,
            arguments: serde_json::Value,
        ) -> $crate::Result<serde_json::Value> {
            self.execute_command(&$crate::Command::new(name, arguments))$(.$await_)?
        }

        /// Executes a [`Command`](crate::Command) with the default timeout.
        pub $($async_)? fn execute_command(
            &self,
            command: &$crate::Command,
        ) -> $crate::Result<serde_json::Value> {
            let timeout = self.config().command_timeout;
            self.execute_with_timeout(command, timeout)$(.$await_)?
        }

        /// Subscribes to every event from now on.
        pub fn subscribe(&self) -> $subscription {
            self.subscribe_filtered($crate::EventFilter::any())
        }

        /// Waits up to `timeout` for the next event matching `filter` (events from now on).
        pub $($async_)? fn wait_event(
            &self,
            filter: &$crate::EventFilter,
            timeout: std::time::Duration,
        ) -> $crate::Result<$crate::Event> {
            self.subscribe_filtered(filter.clone())
                .recv_timeout(timeout)
                $(.$await_)?
        }

        /// Registers a listener for `filter`, executes `command`, then waits for the event; all
        /// within `timeout`. The event cannot race past the listener.
        pub $($async_)? fn execute_and_wait_event(
            &self,
            command: &$crate::Command,
            filter: &$crate::EventFilter,
            timeout: std::time::Duration,
        ) -> $crate::Result<(serde_json::Value, $crate::Event)> {
            let deadline = $crate::deadline::deadline(timeout);
            // `mut` for the async subscription, whose `recv_timeout` takes `&mut self`.
            #[allow(unused_mut)]
            let mut sub = self.subscribe_filtered(filter.clone());
            let value = self.execute_with_timeout(command, timeout)$(.$await_)??;
            let left = $crate::deadline::remaining(deadline).unwrap_or(std::time::Duration::MAX);
            let event = sub.recv_timeout(left)$(.$await_)??;
            Ok((value, event))
        }

        /// `device_del` and wait for `DEVICE_DELETED` for that id. A device the guest does not
        /// release (e.g. cold-plugged into a paused VM) ends in [`Error::Timeout`](crate::Error::Timeout).
        pub $($async_)? fn device_del(
            &self,
            id: &str,
            timeout: std::time::Duration,
        ) -> $crate::Result<$crate::Event> {
            let command = $crate::commands::device_del(id);
            let filter = $crate::EventFilter::device_deleted(id);
            let (_, event) = self.execute_and_wait_event(&command, &filter, timeout)$(.$await_)??;
            Ok(event)
        }

        /// `system_powerdown` and wait for `POWERDOWN`.
        pub $($async_)? fn system_powerdown(
            &self,
            timeout: std::time::Duration,
        ) -> $crate::Result<$crate::Event> {
            let command = $crate::commands::system_powerdown();
            let filter = $crate::EventFilter::powerdown();
            let (_, event) = self.execute_and_wait_event(&command, &filter, timeout)$(.$await_)??;
            Ok(event)
        }

        /// Passes `fd` to QEMU under `name` (`getfd`, the fd sent with SCM_RIGHTS). The fd is
        /// duplicated for sending.
        pub $($async_)? fn getfd(
            &self,
            name: &str,
            fd: std::os::fd::BorrowedFd<'_>,
        ) -> $crate::Result<()> {
            let fds = vec![fd.try_clone_to_owned()?];
            let timeout = self.config().command_timeout;
            self.execute_with_fds(&$crate::commands::getfd(name), timeout, fds)$(.$await_)??;
            Ok(())
        }

        /// Adds `fd` to an fd set (`add-fd`, the fd sent with SCM_RIGHTS); a new set when
        /// `fdset_id` is `None`. The fd is duplicated for sending.
        pub $($async_)? fn add_fd(
            &self,
            fdset_id: Option<u64>,
            opaque: Option<&str>,
            fd: std::os::fd::BorrowedFd<'_>,
        ) -> $crate::Result<$crate::AddFdInfo> {
            let fds = vec![fd.try_clone_to_owned()?];
            let command = $crate::commands::add_fd(fdset_id, opaque);
            let timeout = self.config().command_timeout;
            let reply = self.execute_with_fds(&command, timeout, fds)$(.$await_)??;
            $crate::client::decode_reply("add-fd", &reply)
        }

        /// Runs a [`MemoryHotplug`](crate::commands::MemoryHotplug): `object-add`, then
        /// `device_add`; if `device_add` fails the backend is removed again and `device_add`'s
        /// error is returned.
        pub $($async_)? fn hotplug_memory(
            &self,
            plan: &$crate::commands::MemoryHotplug,
        ) -> $crate::Result<()> {
            self.execute_command(&plan.object_add)$(.$await_)??;
            if let Err(e) = self.execute_command(&plan.device_add)$(.$await_)? {
                if let Err(undo) = self.execute_command(&plan.rollback)$(.$await_)? {
                    tracing::warn!(error = %undo, "rolling back the memory backend failed");
                }
                return Err(e);
            }
            Ok(())
        }
    };
}
pub(crate) use command_helpers;

/// Decodes the reply to `what` into `T`, keeping the raw JSON on failure.
pub(crate) fn decode_reply<T: serde::de::DeserializeOwned>(
    what: &str,
    reply: &RawReply,
) -> Result<T> {
    serde_json::from_str(reply.get()).map_err(|source| Error::Decode {
        what: what.to_owned(),
        raw: serde_json::from_str(reply.get())
            .unwrap_or_else(|_| Value::String(reply.get().into())),
        source,
    })
}

/// A reply's value as JSON.
pub(crate) fn reply_value(reply: &RawReply) -> Result<Value> {
    crate::message::value_of(reply)
}

/// The error for a failed write: a peer that went away is [`Error::Disconnected`] (whether or
/// not the reader has seen the end of the stream yet), a write that timed out is
/// [`Error::Timeout`], anything else [`Error::Io`].
pub(crate) fn write_error(e: std::io::Error, what: &str, timeout: Duration) -> Error {
    use std::io::ErrorKind;
    if peer_gone(&e) {
        return Error::Disconnected;
    }
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Error::Timeout {
            what: what.to_owned(),
            after: timeout,
        },
        _ => Error::Io(e),
    }
}

/// Whether a socket error says the peer closed the connection.
pub(crate) fn peer_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected
    )
}

/// The timeout error for a command.
pub(crate) fn command_timeout(name: &str, after: Duration) -> Error {
    Error::Timeout {
        what: format!("command `{name}`"),
        after,
    }
}

/// The timeout error for the greeting and negotiation.
pub(crate) fn greeting_timeout(after: Duration) -> Error {
    Error::Timeout {
        what: "QMP greeting and negotiation".into(),
        after,
    }
}

/// The timeout error for an event.
pub(crate) fn event_timeout(filter: &EventFilter, after: Duration) -> Error {
    Error::Timeout {
        what: format!("event {filter}"),
        after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type ProbeLink = Link<Probe, NoEvents>;

    /// A waiter that records, when woken, whether the connection's lock was free.
    struct Probe {
        link: Arc<Mutex<ProbeLink>>,
        woke_unlocked: Arc<Mutex<Vec<bool>>>,
    }

    impl Waiter for Probe {
        fn deliver(self, _result: Result<RawReply>) -> Option<Self> {
            // As a caller asleep on its slot.
            Some(self)
        }

        fn wake(self) {
            let unlocked = self.link.try_lock().is_ok();
            lock(&self.woke_unlocked).push(unlocked);
        }
    }

    struct NoEvents;

    impl EventSink for NoEvents {
        fn send(&self, _event: Event) -> bool {
            false
        }
    }

    #[test]
    fn callers_delivered_to_are_woken_after_the_lock_is_let_go() {
        let link = Arc::new(Mutex::new(Link {
            session: Session::new(1 << 20, false),
            subscribers: Vec::new(),
            next_subscriber: 1,
            wakes: Vec::new(),
        }));
        let woke_unlocked = Arc::new(Mutex::new(Vec::new()));
        let probe = |id| Action::Reply {
            id,
            waiter: Probe {
                link: Arc::clone(&link),
                woke_unlocked: Arc::clone(&woke_unlocked),
            },
            result: Err(Error::Disconnected),
        };
        {
            let mut guard = LinkGuard::new(&link);
            guard.dispatch(&mut vec![probe(1), probe(2)]);
            assert!(lock(&woke_unlocked).is_empty(), "woken under the lock");
        }
        assert_eq!(*lock(&woke_unlocked), [true, true]);
        assert!(lock(&link).wakes.is_empty());
    }
}
