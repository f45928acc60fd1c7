//! The blocking client: callers read for themselves (leader/follower), a background thread reads
//! only when no caller does, writes are coalesced, a timeout bounds every wait.
//!
//! **Reading.** A caller waiting for its reply becomes the *leader* when nobody is reading the
//! socket: it waits for data itself, feeds the session and delivers whatever arrived (its own
//! reply, other callers' replies, events) in the critical section that fed it. A lone caller
//! thus pays no thread hand-off. Callers that find a leader are *followers*: they sleep on their
//! own slot until their reply is delivered or the leader steps down and promotes one of them.
//! When no caller waits, a background thread (asleep on an epoll set that callers switch off
//! while they lead) reads, so events reach subscribers while no command runs and the end of the
//! connection is noticed.
//!
//! **Writing.** Commands go into the session's queue; the caller that takes the writer lock
//! writes everything queued behind it in one `sendmsg` (descriptors in their own), and a thread
//! that finds the lock taken leaves its command to the holder. Every write is bounded by
//! `command_timeout` (`SO_SNDTIMEO`); a write that fails or times out ends the session.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{debug, warn};

use crate::client::{
    command_helpers, command_timeout, connection_accessors, event_timeout, greeting_timeout, lock,
    peer_gone, reply_value, write_error, Connection, EventSink, Handshake, Negotiated,
    Registration,
};
use crate::config::Config;
use crate::deadline::{deadline, remaining};
use crate::error::{Error, Result};
use crate::event::{Event, EventFilter};
use crate::message::Command;
use crate::protocol::{Action, RawReply};
use crate::sys::{recv_now, wait_readable, Watch};

/// Where a caller receives its result, and learns that it may lead.
#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct SlotState {
    result: Option<Result<RawReply>>,
    /// The leader stepped down: this caller may take over reading.
    promoted: bool,
    /// The caller sleeps on `wake` (a leader delivering its own reply wakes nobody).
    sleeping: bool,
}

type Waiter = Arc<Slot>;

impl crate::client::Waiter for Waiter {
    fn deliver(self, result: Result<RawReply>) {
        let mut state = lock(&self.state);
        state.result = Some(result);
        if state.sleeping {
            self.wake.notify_one();
        }
    }
}

impl Slot {
    fn take_result(&self) -> Option<Result<RawReply>> {
        lock(&self.state).result.take()
    }

    fn has_result(&self) -> bool {
        lock(&self.state).result.is_some()
    }

    fn promote(&self) {
        let mut state = lock(&self.state);
        state.promoted = true;
        if state.sleeping {
            self.wake.notify_one();
        }
    }

    /// Whether the caller was promoted since it last looked (and forgets it).
    fn take_promotion(&self) -> bool {
        std::mem::take(&mut lock(&self.state).promoted)
    }

    /// Sleeps until a result is delivered, the caller is promoted, or `deadline` passes.
    fn sleep(&self, deadline: Option<Instant>) {
        let mut state = lock(&self.state);
        while state.result.is_none() && !state.promoted {
            state.sleeping = true;
            state = match remaining(deadline) {
                None => self
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(left) if left.is_zero() => return,
                Some(left) => {
                    self.wake
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            state.sleeping = false;
        }
    }
}

impl EventSink for mpsc::Sender<Event> {
    fn send(&self, event: Event) -> bool {
        mpsc::Sender::send(self, event).is_ok()
    }
}

/// Who reads the socket now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leader {
    Caller,
    Background,
}

/// The reading role, behind its own lock (never held together with the connection's).
#[derive(Debug)]
struct Reading {
    leader: Option<Leader>,
    /// Callers waiting while someone else reads, oldest first.
    followers: VecDeque<Arc<Slot>>,
    /// Whether the background thread's epoll set watches the socket.
    watching: bool,
}

/// What the leader reads with: only the leader locks it.
struct ReadSide {
    stream: UnixStream,
    buf: Vec<u8>,
    actions: Vec<Action<Waiter, RawReply>>,
}

struct Inner {
    conn: Arc<Connection<Waiter, mpsc::Sender<Event>>>,
    writer: Mutex<UnixStream>,
    read: Mutex<ReadSide>,
    reading: Mutex<Reading>,
    watch: Watch,
}

/// A blocking QMP client over a Unix socket. `Send + Sync`: share it between threads with `&` or
/// `Arc`. Dropping it closes the connection.
///
/// ```no_run
/// use hvarch_qmp::{Config, Qmp};
/// let qmp = Qmp::connect("/run/vm/qmp.sock", &Config::default())?;
/// let status = qmp.execute(&qapi_qmp::query_status {})?;
/// println!("QEMU {} is {:?}", qmp.version(), status.status);
/// # Ok::<(), hvarch_qmp::Error>(())
/// ```
pub struct Qmp {
    inner: Arc<Inner>,
    background: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.connection().fmt_client("Qmp", f)
    }
}

impl Qmp {
    /// Connects to the QMP socket at `path`, reads the greeting and negotiates.
    pub fn connect(path: impl AsRef<Path>, config: &Config) -> Result<Qmp> {
        let stream = UnixStream::connect(path.as_ref())?;
        Qmp::from_stream(stream, config)
    }

    /// Takes an already connected socket (e.g. accepted from a listener handed to QEMU).
    pub fn from_fd(fd: OwnedFd, config: &Config) -> Result<Qmp> {
        Qmp::from_stream(UnixStream::from(fd), config)
    }

    /// Takes an already connected stream, reads the greeting and negotiates.
    pub fn from_stream(stream: UnixStream, config: &Config) -> Result<Qmp> {
        let mut reader = stream.try_clone()?;
        let writer = stream;
        let negotiated = handshake(&mut reader, &writer, config)?;
        // Reads never block in the kernel (they wait in `ppoll`/epoll, then `recv` with
        // MSG_DONTWAIT); writes block, bounded by `command_timeout`. A zero timeout would be
        // refused by the socket (it means "none" to `set_*_timeout`).
        reader.set_read_timeout(None)?;
        writer.set_write_timeout(Some(config.command_timeout).filter(|t| !t.is_zero()))?;
        let watch = Watch::new(reader.as_fd())?;
        watch.on()?;
        let inner = Arc::new(Inner {
            conn: Arc::new(Connection::new(negotiated, writer.try_clone()?, config)),
            writer: Mutex::new(writer),
            read: Mutex::new(ReadSide {
                stream: reader,
                buf: vec![0u8; 64 * 1024],
                actions: Vec::new(),
            }),
            reading: Mutex::new(Reading {
                leader: None,
                followers: VecDeque::new(),
                watching: true,
            }),
            watch,
        });
        let thread_inner = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("qmp-events".into())
            .spawn(move || thread_inner.background())?;
        Ok(Qmp {
            inner,
            background: Mutex::new(Some(handle)),
        })
    }

    fn connection(&self) -> &Connection<Waiter, mpsc::Sender<Event>> {
        &self.inner.conn
    }

    connection_accessors!();

    command_helpers!(EventSubscription, [], []);

    /// Executes a [`Command`] with its own timeout. On timeout the connection stays usable and a
    /// late reply is dropped.
    pub fn execute_with_timeout(&self, command: &Command, timeout: Duration) -> Result<Value> {
        reply_value(&self.execute_with_fds(command, timeout, Vec::new())?)
    }

    fn execute_with_fds(
        &self,
        command: &Command,
        timeout: Duration,
        fds: Vec<OwnedFd>,
    ) -> Result<RawReply> {
        let deadline = deadline(timeout);
        let slot = Arc::new(Slot::default());
        let id = lock(&self.inner.conn.state)
            .session
            .submit(command, fds, Arc::clone(&slot))?;
        // Take the reading role before the command goes out, so that the reply cannot reach
        // the background thread first.
        let leading = self.inner.claim_reading();
        self.inner.flush();
        if let Some(result) = self.inner.wait(&slot, deadline, leading) {
            return result;
        }
        lock(&self.inner.conn.state).session.cancel(id);
        // The reply may have been delivered between the deadline and the cancel.
        slot.take_result()
            .unwrap_or_else(|| Err(command_timeout(&command.name, timeout)))
    }

    /// Subscribes to events matching `filter` from now on.
    pub fn subscribe_filtered(&self, filter: EventFilter) -> EventSubscription {
        let (tx, rx) = mpsc::channel();
        EventSubscription {
            rx,
            _registration: self.inner.conn.subscribe(filter.clone(), tx),
            filter,
        }
    }

    /// Closes the connection: pending commands fail with [`Error::Disconnected`], subscriptions
    /// end, the background reader is joined. Idempotent.
    pub fn close(&self) {
        let handle = lock(&self.background).take();
        if let Some(handle) = handle {
            self.inner.conn.end(Error::Disconnected);
            self.inner.settle(&mut lock(&self.inner.reading));
            if handle.join().is_err() {
                warn!("QMP background reader panicked");
            }
            debug!("QMP connection closed");
        }
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.close();
    }
}

impl Inner {
    /// Writes whatever the session has ready, unless another thread is writing: that one
    /// writes what was queued behind it before it lets go. A write that fails ends the session.
    fn flush(&self) {
        loop {
            let writer = match self.writer.try_lock() {
                Ok(w) => w,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            loop {
                let Some(t) = lock(&self.conn.state).session.poll_transmit() else {
                    break;
                };
                let fds: Vec<BorrowedFd<'_>> = t.fds.iter().map(AsFd::as_fd).collect();
                if let Err(e) = crate::fdpass::send_all(writer.as_fd(), &t.bytes, &fds) {
                    drop(writer);
                    // A partial write would desynchronise the stream: end the session.
                    warn!(error = %e, "QMP write failed; closing the connection");
                    if peer_gone(&e) {
                        self.read_what_is_left();
                    }
                    let timeout = self.conn.config().command_timeout;
                    self.conn
                        .end(write_error(e, "writing QMP commands", timeout));
                    self.settle(&mut lock(&self.reading));
                    return;
                }
            }
            drop(writer);
            // A command queued while this thread held the lock has been left to it.
            if !lock(&self.conn.state).session.has_transmit() {
                return;
            }
        }
    }

    /// The peer is gone: [`Connection::read_what_is_left`], unless another reader holds the
    /// socket (it delivers).
    fn read_what_is_left(&self) {
        let Ok(mut read) = self.read.try_lock() else {
            return;
        };
        let ReadSide {
            stream,
            buf,
            actions,
        } = &mut *read;
        self.conn.read_what_is_left(stream.as_fd(), buf, actions);
    }

    /// Takes the reading role if nobody has it; returns whether this caller now leads.
    fn claim_reading(&self) -> bool {
        let mut reading = lock(&self.reading);
        if reading.leader.is_some() {
            return false;
        }
        reading.leader = Some(Leader::Caller);
        self.watch_socket(&mut reading, false);
        true
    }

    /// Waits for `slot`'s result until `deadline`, reading the socket when nobody else does
    /// (`leading`: this caller already has the role). `None` when the deadline passed first.
    fn wait(
        &self,
        slot: &Arc<Slot>,
        deadline: Option<Instant>,
        mut leading: bool,
    ) -> Option<Result<RawReply>> {
        loop {
            if leading {
                self.lead(slot, deadline);
                let mut reading = lock(&self.reading);
                reading.leader = None;
                self.settle(&mut reading);
                leading = false;
            }
            if let Some(result) = slot.take_result() {
                return Some(result);
            }
            if remaining(deadline).is_some_and(|r| r.is_zero()) {
                return None;
            }
            let mut reading = lock(&self.reading);
            if reading.leader.is_none() {
                reading.leader = Some(Leader::Caller);
                self.watch_socket(&mut reading, false);
                leading = true;
                continue;
            }
            reading.followers.push_back(Arc::clone(slot));
            drop(reading);
            slot.sleep(deadline);
            let mut reading = lock(&self.reading);
            reading.followers.retain(|f| !Arc::ptr_eq(f, slot));
            let leaving = slot.has_result() || remaining(deadline).is_some_and(|r| r.is_zero());
            // Promoted but leaving: pass the role on. Promoted and staying: the loop takes it.
            if slot.take_promotion() && leaving {
                self.settle(&mut reading);
            }
        }
    }

    /// Reads as the leader until `slot` has its result, `deadline` passes or the session ends.
    fn lead(&self, slot: &Slot, deadline: Option<Instant>) {
        let mut read = lock(&self.read);
        while !slot.has_result() {
            let left = remaining(deadline);
            if left.is_some_and(|r| r.is_zero()) {
                return;
            }
            match wait_readable(read.stream.as_fd(), left) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    self.read_done(&mut read, Err(e));
                    return;
                }
            }
            if self.read_once(&mut read) {
                return;
            }
        }
    }

    /// One `recv` and what follows; returns whether the session is closed.
    fn read_once(&self, read: &mut ReadSide) -> bool {
        let n = recv_now(read.stream.as_fd(), &mut read.buf);
        if matches!(&n, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            return false;
        }
        self.read_done(read, n)
    }

    /// Feeds `n` bytes read into the buffer (0 or an error: the end of the stream), delivers in
    /// the same critical section, then writes what the replies let go. Returns whether the
    /// session is closed.
    fn read_done(&self, read: &mut ReadSide, n: io::Result<usize>) -> bool {
        let ReadSide { buf, actions, .. } = read;
        let bytes = n.map(|n| buf.get(..n).unwrap_or_default());
        let (closed, ready) = {
            let mut state = lock(&self.conn.state);
            let closed = state.on_read(bytes, actions);
            (closed, state.session.has_transmit())
        };
        if closed {
            self.conn.shutdown();
        } else if ready {
            self.flush();
        }
        closed
    }

    /// After the reading role changed: if nobody reads, the oldest follower is asked to, or
    /// the background thread takes over.
    fn settle(&self, reading: &mut Reading) {
        if reading.leader.is_some() {
            return;
        }
        // A follower whose result has arrived is about to leave: ask the next one.
        let next = reading.followers.iter().find(|f| !f.has_result()).cloned();
        match next {
            Some(next) if !self.conn.is_shut_down() => {
                self.watch_socket(reading, false);
                next.promote();
            }
            _ => self.watch_socket(reading, true),
        }
    }

    fn watch_socket(&self, reading: &mut Reading, on: bool) {
        if reading.watching == on {
            return;
        }
        let result = if on {
            self.watch.on()
        } else {
            self.watch.off()
        };
        match result {
            Ok(()) => reading.watching = on,
            Err(e) => warn!(error = %e, on, "QMP: epoll_ctl failed"),
        }
    }

    /// The background reader: sleeps on the epoll set, and reads when it wakes with nobody
    /// else reading. Ends with the connection.
    fn background(&self) {
        loop {
            if let Err(e) = self.watch.wait() {
                warn!(error = %e, "QMP: epoll_wait failed; events are read only by callers");
                return;
            }
            if self.conn.is_shut_down() {
                return;
            }
            {
                let mut reading = lock(&self.reading);
                if reading.leader.is_some() || !reading.watching {
                    continue;
                }
                reading.leader = Some(Leader::Background);
            }
            let closed = self.read_once(&mut lock(&self.read));
            let mut reading = lock(&self.reading);
            reading.leader = None;
            self.settle(&mut reading);
            if closed {
                return;
            }
        }
    }
}

fn handshake(
    reader: &mut UnixStream,
    writer: &UnixStream,
    config: &Config,
) -> Result<Negotiated<Waiter>> {
    let mut handshake = Handshake::new(config);
    let deadline = deadline(config.greeting_timeout);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let remaining = remaining(deadline);
        if remaining.is_some_and(|r| r.is_zero()) {
            return Err(greeting_timeout(config.greeting_timeout));
        }
        reader.set_read_timeout(remaining)?;
        writer.set_write_timeout(remaining)?;
        let send = match reader.read(&mut buf) {
            Ok(n) => handshake.on_read(buf.get(..n).filter(|b| !b.is_empty()))?,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(Error::Io(e)),
        };
        if let Some(bytes) = send {
            crate::fdpass::send_all(writer.as_fd(), &bytes, &[])?;
        }
        if handshake.is_done() {
            return handshake.finish();
        }
    }
}

/// A stream of events from a blocking [`Qmp`]. Ends (with [`Error::Disconnected`]) when the
/// connection closes; dropping it unsubscribes. Events queue until read.
#[derive(Debug)]
pub struct EventSubscription {
    rx: mpsc::Receiver<Event>,
    filter: EventFilter,
    _registration: Registration<Waiter, mpsc::Sender<Event>>,
}

impl EventSubscription {
    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => event_timeout(&self.filter, timeout),
            mpsc::RecvTimeoutError::Disconnected => Error::Disconnected,
        })
    }

    /// Waits for the next event until the connection closes.
    pub fn recv(&self) -> Result<Event> {
        self.rx.recv().map_err(|_| Error::Disconnected)
    }

    /// The next queued event, if any, without waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Iterator for EventSubscription {
    type Item = Event;

    /// Blocks for the next event; `None` once the connection is closed.
    fn next(&mut self) -> Option<Event> {
        self.recv().ok()
    }
}
