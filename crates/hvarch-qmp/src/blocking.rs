//! The blocking client: callers read for themselves (leader/follower), a background thread reads
//! only when no caller does, writes are coalesced, a timeout bounds every wait.
//!
//! **Reading.** A caller waiting for its reply becomes the *leader* when nobody is reading the
//! socket: it waits for data itself, feeds the session and delivers whatever arrived (its own
//! reply, other callers' replies, events) in the critical section that fed it. A lone caller
//! thus pays no thread hand-off: a round trip costs it a `sendmsg`, a `ppoll` and a `recv`, and
//! one sleep. It waits in `ppoll`, not in a blocking `recv`: a thread blocked in `recv` on a
//! Unix socket is also woken whenever the peer has consumed what was written to it (QEMU
//! consumes each command, byte by byte, before it answers), which cost a second sleep and
//! wake-up per round trip; `ppoll` is woken only by data or the end of the stream. Callers
//! that find a leader are *followers*: they sleep on their own slot until their reply is
//! delivered or the leader steps down and promotes one of them.
//!
//! When no caller waits, a background thread reads, so events reach subscribers while no
//! command runs and the end of the connection is noticed. It sleeps on a one-shot epoll watch of
//! the socket, which callers never touch: if a caller reads data the watch reported, the
//! background thread wakes once, finds a leader, and *lingers*: it arms the watch again once no
//! caller has read for a whole `LINGER` tick. A caller that steps down while subscriptions
//! exist (or the connection ends) arms the watch at once, so events are read as they come; with
//! no subscription they have nowhere to go, and at most two ticks pass before the background
//! thread reads again (to notice the end of the connection, and keep QEMU's output moving).
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
use std::sync::atomic::{AtomicBool, Ordering};
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

/// How long the background thread leaves the socket to callers after the last one read, before
/// it watches the socket again (when no subscription asks for events at once).
const LINGER: Duration = Duration::from_millis(50);

/// Where a caller receives its result, and learns that it may lead.
#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    wake: Condvar,
    /// The result was delivered (it may have been taken since): set once, in `deliver`, under
    /// `state`'s lock. Read without it by whoever looks for a follower to promote.
    delivered: AtomicBool,
}

#[derive(Debug, Default)]
struct SlotState {
    result: Option<Result<RawReply>>,
    /// The leader stepped down: this caller may take over reading.
    promoted: bool,
    /// The caller sleeps on `wake` (a leader delivering its own reply wakes nobody).
    sleeping: bool,
}

/// What a follower woke to (both taken from its slot in one critical section).
struct Woken {
    result: Option<Result<RawReply>>,
    promoted: bool,
}

type Waiter = Arc<Slot>;

impl crate::client::Waiter for Waiter {
    fn deliver(self, result: Result<RawReply>) -> Option<Self> {
        let mut state = lock(&self.state);
        state.result = Some(result);
        self.delivered.store(true, Ordering::Release);
        let asleep = state.sleeping;
        drop(state);
        asleep.then_some(self)
    }

    fn wake(self) {
        self.wake.notify_one();
    }
}

impl Slot {
    fn take_result(&self) -> Option<Result<RawReply>> {
        lock(&self.state).result.take()
    }

    fn is_delivered(&self) -> bool {
        self.delivered.load(Ordering::Acquire)
    }

    /// Asks the caller to take over reading, unless its result has arrived (it is leaving, or
    /// gone). Returns whether it was asked.
    fn promote(&self) -> bool {
        let mut state = lock(&self.state);
        if self.is_delivered() {
            return false;
        }
        state.promoted = true;
        let sleeping = state.sleeping;
        drop(state);
        if sleeping {
            self.wake.notify_one();
        }
        true
    }

    /// Whether the caller was promoted since it last looked (and forgets it).
    fn take_promotion(&self) -> bool {
        std::mem::take(&mut lock(&self.state).promoted)
    }

    /// Sleeps until a result is delivered, the caller is promoted, or `deadline` passes; takes
    /// both as it wakes.
    fn sleep(&self, deadline: Option<Instant>) -> Woken {
        let mut state = lock(&self.state);
        while state.result.is_none() && !state.promoted {
            state.sleeping = true;
            let left = remaining(deadline);
            if left.is_some_and(|l| l.is_zero()) {
                break;
            }
            state = match left {
                None => self
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(left) => {
                    self.wake
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        state.sleeping = false;
        Woken {
            result: state.result.take(),
            promoted: std::mem::take(&mut state.promoted),
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
    /// Whether the background thread's watch is armed. Only the background thread disarms it
    /// (by waking on it), so while it is not, the background thread lingers.
    armed: bool,
    /// Counts callers taking the reading role, for the lingering background thread to see
    /// whether a whole tick passed without one.
    claims: u64,
}

/// Who reads next when the reader steps down and nobody else reads.
#[derive(Debug)]
enum Handover {
    /// The oldest waiting follower.
    Promote(Arc<Slot>),
    /// The background thread, at once: events are awaited, or the connection ended.
    Arm,
    /// The lingering background thread, after a quiet tick (nothing awaits events).
    Linger,
}

/// What the background thread does when it wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackgroundStep {
    /// Sleep again: a caller reads, or callers read during the last tick (lingering).
    Wait,
    /// Arm the watch and sleep on it: nobody read for a whole tick.
    Arm,
    /// Read: the watch reported and nobody else reads (the role is now the background's).
    Read,
}

impl Reading {
    /// The background thread woke: its watch `reported`, or a lingering tick passed. `seen` is
    /// the claim count it saw at its previous lingering tick.
    fn on_background_wake(&mut self, reported: bool, seen: &mut Option<u64>) -> BackgroundStep {
        if reported {
            // A one-shot watch disarms itself when it reports.
            self.armed = false;
        }
        if self.leader.is_some() {
            *seen = Some(self.claims);
            return BackgroundStep::Wait;
        }
        if reported {
            self.leader = Some(Leader::Background);
            return BackgroundStep::Read;
        }
        if *seen == Some(self.claims) {
            return BackgroundStep::Arm;
        }
        *seen = Some(self.claims);
        BackgroundStep::Wait
    }
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
        // Reads and writes wait in the kernel, bounded by the socket's timeouts: a stream set
        // non-blocking (by a runtime it came from, say) would make every wait a busy loop.
        stream.set_nonblocking(false)?;
        let mut reader = stream.try_clone()?;
        let writer = stream;
        let negotiated = handshake(&mut reader, &writer, config)?;
        // Reads never wait in `recv` (see `Inner::lead`), so the handshake's receive timeout is
        // cleared. Writes block, bounded by `command_timeout`. A zero timeout would be refused
        // by the socket (it means "none" to `set_*_timeout`).
        reader.set_read_timeout(None)?;
        writer.set_write_timeout(Some(config.command_timeout).filter(|t| !t.is_zero()))?;
        let watch = Watch::new(reader.as_fd())?;
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
                armed: true,
                claims: 0,
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
        let id = self
            .inner
            .conn
            .link()
            .session
            .submit(command, fds, Arc::clone(&slot))?;
        // Take the reading role (or a place among the followers) before the command goes out,
        // so that the reply cannot reach the background thread first.
        let leading = self
            .inner
            .lead_or_follow(&mut lock(&self.inner.reading), &slot);
        self.inner.flush();
        if let Some(result) = self.inner.wait(&slot, deadline, leading) {
            return result;
        }
        self.inner.conn.link().session.cancel(id);
        // The reply may have been delivered between the deadline and the cancel.
        slot.take_result()
            .unwrap_or_else(|| Err(command_timeout(&command.name, timeout)))
    }

    /// Subscribes to events matching `filter` from now on.
    pub fn subscribe_filtered(&self, filter: EventFilter) -> EventSubscription {
        let (tx, rx) = mpsc::channel();
        let registration = self.inner.conn.subscribe(filter.clone(), tx);
        // Events have somewhere to go now: read them as they come.
        self.inner.settle(&mut lock(&self.inner.reading));
        EventSubscription {
            rx,
            _registration: registration,
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
                let Some(t) = self.conn.link().session.poll_transmit() else {
                    break;
                };
                let fds: Vec<BorrowedFd<'_>> = t.fds.iter().map(AsFd::as_fd).collect();
                if let Err(e) = crate::fdpass::send_all(writer.as_fd(), &t.bytes, &fds) {
                    drop(writer);
                    // A partial write would desynchronise the stream: end the session.
                    warn!(error = %e, "QMP write failed; closing the connection");
                    if peer_gone(&e) && !self.read_what_is_left() {
                        // Another thread reads the socket. Shut it down: that reader gets
                        // what the peer sent before it went, then the end of the stream,
                        // which ends the session (with `Disconnected`, as this write would);
                        // the background thread drains what a reader stepping down leaves.
                        self.conn.shutdown();
                        self.settle(&mut lock(&self.reading));
                        return;
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
            if !self.conn.link().session.has_transmit() {
                return;
            }
        }
    }

    /// The peer is gone: [`Connection::read_what_is_left`], unless another thread reads the
    /// socket. Returns whether this thread read it.
    fn read_what_is_left(&self) -> bool {
        let Ok(mut read) = self.read.try_lock() else {
            return false;
        };
        self.drain(&mut read);
        true
    }

    /// The socket is shut down: delivers what is left in it (reads no longer wait), waiting
    /// for a reader still at it, then ends the session, so that no caller waits for a reply
    /// that cannot come.
    fn drain_and_end(&self) {
        self.drain(&mut lock(&self.read));
        self.conn.end(Error::Disconnected);
    }

    /// [`Connection::read_what_is_left`] with the reader's socket and buffers.
    fn drain(&self, read: &mut ReadSide) {
        let ReadSide {
            stream,
            buf,
            actions,
        } = read;
        self.conn.read_what_is_left(stream.as_fd(), buf, actions);
    }

    /// Takes the reading role for a caller if nobody has it (returns `true`), or queues its
    /// `slot` among the followers.
    fn lead_or_follow(&self, reading: &mut Reading, slot: &Arc<Slot>) -> bool {
        if Self::claim(reading) {
            return true;
        }
        // Followers that received their result leave without touching the queue: drop them here,
        // so that it never holds more than the callers waiting.
        reading.followers.retain(|f| !f.is_delivered());
        reading.followers.push_back(Arc::clone(slot));
        false
    }

    fn claim(reading: &mut Reading) -> bool {
        if reading.leader.is_some() {
            return false;
        }
        reading.leader = Some(Leader::Caller);
        reading.claims = reading.claims.wrapping_add(1);
        true
    }

    /// Waits for `slot`'s result until `deadline`, reading the socket when nobody else does
    /// (`leading`: this caller has the role; otherwise its slot is queued among the
    /// followers). `None` when the deadline passed first.
    fn wait(
        &self,
        slot: &Arc<Slot>,
        deadline: Option<Instant>,
        mut leading: bool,
    ) -> Option<Result<RawReply>> {
        let expired = || remaining(deadline).is_some_and(|r| r.is_zero());
        loop {
            let mut reading = if leading {
                self.lead(slot, deadline);
                let mut reading = lock(&self.reading);
                reading.leader = None;
                self.settle(&mut reading);
                let result = slot.take_result();
                if result.is_some() || expired() {
                    return result;
                }
                reading
            } else {
                let woken = slot.sleep(deadline);
                if !woken.promoted {
                    if woken.result.is_some() {
                        // Its entry among the followers is dropped by the next caller queued.
                        return woken.result;
                    }
                    // The deadline passed: leave the queue. Promoted meanwhile (before this
                    // lock, which promotions take), pass the role on.
                    let mut reading = lock(&self.reading);
                    reading.followers.retain(|f| !Arc::ptr_eq(f, slot));
                    if slot.take_promotion() {
                        self.settle(&mut reading);
                    }
                    drop(reading);
                    // Delivered between the deadline and now, or not.
                    return slot.take_result();
                }
                // Promoted (the promoter took it off the queue). Leaving: pass the role on.
                let mut reading = lock(&self.reading);
                let result = woken.result.or_else(|| slot.take_result());
                if result.is_some() || expired() {
                    self.settle(&mut reading);
                    return result;
                }
                reading
            };
            // Still waiting: lead (a promoted caller takes the role here, under the lock it
            // was promoted under) or follow again.
            leading = self.lead_or_follow(&mut reading, slot);
        }
    }

    /// Reads as the leader until `slot` has its result, `deadline` passes or the session ends:
    /// waits in `ppoll` (see the module's documentation), then reads what is there.
    fn lead(&self, slot: &Slot, deadline: Option<Instant>) {
        let mut read = lock(&self.read);
        while !slot.is_delivered() {
            let ReadSide { stream, buf, .. } = &mut *read;
            let n = match remaining(deadline) {
                Some(left) if left.is_zero() => return,
                left => match wait_readable(stream.as_fd(), left) {
                    Ok(true) => recv_now(stream.as_fd(), buf),
                    Ok(false) => continue,
                    Err(e) => Err(e),
                },
            };
            if matches!(&n, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted))
            {
                continue;
            }
            if self.read_done(&mut read, n) {
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
            let mut state = self.conn.link();
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

    /// After the reading role changed: if nobody reads, the oldest follower is asked to;
    /// otherwise the background thread's watch is armed when events are awaited or the
    /// connection ended (else the lingering background thread arms it after a quiet tick).
    fn settle(&self, reading: &mut Reading) {
        if reading.leader.is_some() {
            return;
        }
        if let Handover::Arm = self.promote_next(reading) {
            self.arm(reading);
        }
    }

    /// Carries out [`Inner::handover`]'s promotion (passing over a follower whose result
    /// arrived since it was chosen); returns the hand-over made, or what to do instead.
    fn promote_next(&self, reading: &mut Reading) -> Handover {
        loop {
            match self.handover(reading) {
                Handover::Promote(next) if !next.promote() => continue,
                done => return done,
            }
        }
    }

    /// Who reads next when nobody does. A follower chosen leaves the queue.
    fn handover(&self, reading: &mut Reading) -> Handover {
        let shut_down = self.conn.is_shut_down();
        if !shut_down {
            // A follower whose result has arrived is leaving (or gone): ask the next one.
            while let Some(next) = reading.followers.pop_front() {
                if !next.is_delivered() {
                    return Handover::Promote(next);
                }
            }
        }
        if shut_down || self.conn.has_subscriptions() {
            Handover::Arm
        } else {
            Handover::Linger
        }
    }

    /// Arms the background thread's watch, unless it is armed.
    fn arm(&self, reading: &mut Reading) {
        if reading.armed {
            return;
        }
        match self.watch.arm() {
            Ok(()) => reading.armed = true,
            Err(e) => warn!(error = %e, "QMP: epoll_ctl failed"),
        }
    }

    /// The background reader: sleeps on the watch, and reads when it reports with nobody else
    /// reading; while callers read, lingers (see the module's documentation). Ends with the
    /// connection.
    fn background(&self) {
        // The claim count at the last lingering tick.
        let mut seen = None;
        loop {
            let armed = lock(&self.reading).armed;
            let reported = match self.watch.wait((!armed).then_some(LINGER)) {
                Ok(reported) => reported,
                Err(e) => {
                    warn!(error = %e, "QMP: epoll_wait failed; events are read only by callers");
                    return;
                }
            };
            if self.conn.is_shut_down() {
                self.drain_and_end();
                return;
            }
            {
                let mut reading = lock(&self.reading);
                match reading.on_background_wake(reported, &mut seen) {
                    BackgroundStep::Wait => continue,
                    BackgroundStep::Arm => {
                        self.arm(&mut reading);
                        continue;
                    }
                    BackgroundStep::Read => {}
                }
            }
            let closed = self.read_once(&mut lock(&self.read));
            let mut reading = lock(&self.reading);
            reading.leader = None;
            // Events come while no caller reads: unless a follower takes over, watch for the
            // next one at once (this thread is not lingering).
            if !matches!(self.promote_next(&mut reading), Handover::Promote(_)) {
                self.arm(&mut reading);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeServer;
    use serde_json::json;

    fn reading() -> Reading {
        Reading {
            leader: None,
            followers: VecDeque::new(),
            armed: true,
            claims: 0,
        }
    }

    #[test]
    fn the_background_reads_what_its_watch_reports_while_nobody_else_reads() {
        let mut r = reading();
        let mut seen = None;
        assert_eq!(r.on_background_wake(true, &mut seen), BackgroundStep::Read);
        assert_eq!(r.leader, Some(Leader::Background));
        assert!(!r.armed, "a one-shot watch that reported is disarmed");
    }

    #[test]
    fn the_background_lingers_while_callers_read_and_watches_again_after_a_quiet_tick() {
        let mut r = reading();
        let mut seen = None;
        // A caller leads; the reply it reads wakes the background thread.
        assert!(Inner::claim(&mut r));
        assert_eq!(r.on_background_wake(true, &mut seen), BackgroundStep::Wait);
        assert!(!r.armed);
        r.leader = None;
        // Ticks: the caller came back during the first, then nobody for a whole one.
        assert!(Inner::claim(&mut r));
        r.leader = None;
        assert_eq!(r.on_background_wake(false, &mut seen), BackgroundStep::Wait);
        assert_eq!(r.on_background_wake(false, &mut seen), BackgroundStep::Arm);
        // A caller reading at a tick keeps it waiting, whatever it saw before.
        assert!(Inner::claim(&mut r));
        assert_eq!(r.on_background_wake(false, &mut seen), BackgroundStep::Wait);
        r.leader = None;
        assert_eq!(r.on_background_wake(false, &mut seen), BackgroundStep::Arm);
    }

    fn echo_server() -> (UnixStream, FakeServer) {
        FakeServer::spawn(|mut c| {
            c.handshake();
            c.echo_until_eof();
        })
        .expect("spawn")
    }

    fn echo_client() -> (Qmp, FakeServer) {
        let (client, server) = echo_server();
        let qmp = Qmp::from_stream(client, &Config::default()).expect("connect");
        (qmp, server)
    }

    /// As if the background thread had woken on a reply a caller read: the watch disarmed (in
    /// the kernel too, so that nothing reported from now on changes the flag behind the test).
    fn disarm(qmp: &Qmp) {
        let mut reading = lock(&qmp.inner.reading);
        qmp.inner.watch.disable().expect("epoll_ctl");
        reading.armed = false;
    }

    fn handover(qmp: &Qmp) -> Handover {
        qmp.inner.handover(&mut lock(&qmp.inner.reading))
    }

    #[test]
    fn who_reads_next() {
        let (qmp, server) = echo_client();
        // A lone caller that steps down leaves the socket to the lingering background thread:
        // it pays for no epoll_ctl.
        assert!(matches!(handover(&qmp), Handover::Linger));
        let follower = || {
            let slot = Arc::new(Slot::default());
            lock(&qmp.inner.reading)
                .followers
                .push_back(Arc::clone(&slot));
            slot
        };
        let (first, second) = (follower(), follower());
        assert!(matches!(handover(&qmp), Handover::Promote(next) if Arc::ptr_eq(&next, &first)));
        assert!(
            matches!(handover(&qmp), Handover::Promote(next) if Arc::ptr_eq(&next, &second)),
            "a follower chosen leaves the queue"
        );
        // A follower whose result has arrived is leaving: not promoted, and dropped.
        let (leaving, staying) = (follower(), follower());
        crate::client::Waiter::deliver(Arc::clone(&leaving), Err(Error::Disconnected));
        assert!(!leaving.promote(), "its caller may be gone");
        assert!(matches!(handover(&qmp), Handover::Promote(next) if Arc::ptr_eq(&next, &staying)));
        assert!(matches!(handover(&qmp), Handover::Linger));
        assert!(lock(&qmp.inner.reading).followers.is_empty());
        let events = qmp.subscribe();
        assert!(
            matches!(handover(&qmp), Handover::Arm),
            "events would wait a tick"
        );
        drop(events);
        assert!(matches!(handover(&qmp), Handover::Linger));
        qmp.close();
        assert!(
            matches!(handover(&qmp), Handover::Arm),
            "the end must wake the background"
        );
        server.join();
    }

    /// A lone caller sleeps once per round trip: it waits for the reply in a way that the peer
    /// consuming the command (QEMU reads it byte by byte, while the caller already waits) does
    /// not wake. Waiting in a blocking `recv` sleeps twice.
    #[test]
    fn a_lone_caller_sleeps_once_per_round_trip() {
        const ROUND_TRIPS: i64 = 40;
        let (client, server) = FakeServer::spawn(|mut c| {
            c.handshake();
            c.answer_slowly(Duration::from_millis(3));
        })
        .expect("spawn");
        let qmp = Qmp::from_stream(client, &Config::default()).expect("connect");
        let before = crate::testing::thread_sleeps();
        for _ in 0..ROUND_TRIPS {
            qmp.execute_raw("query-status", json!({})).expect("reply");
        }
        // Once per round trip, and a few more for locks the background thread happened to
        // hold; twice per round trip if the wait wakes when the command is consumed.
        if let (Some(before), Some(after)) = (before, crate::testing::thread_sleeps()) {
            let sleeps = after - before;
            assert!(
                sleeps < ROUND_TRIPS * 3 / 2,
                "{sleeps} sleeps in {ROUND_TRIPS} round trips"
            );
        }
        qmp.close();
        server.join();
    }

    /// Followers that got their result leave without taking the reading lock; their entries
    /// must not pile up while one caller leads for long.
    #[test]
    fn the_follower_queue_holds_only_callers_still_waiting() {
        let (qmp, server) = echo_client();
        let mut reading = lock(&qmp.inner.reading);
        reading.leader = Some(Leader::Caller);
        let mut waiting = Vec::new();
        for i in 0..100 {
            let slot = Arc::new(Slot::default());
            assert!(
                !qmp.inner.lead_or_follow(&mut reading, &slot),
                "someone leads"
            );
            if i % 10 == 0 {
                waiting.push(slot);
            } else {
                crate::client::Waiter::deliver(slot, Err(Error::Disconnected));
            }
        }
        assert!(
            reading.followers.len() <= waiting.len() + 1,
            "{} entries for {} callers waiting",
            reading.followers.len(),
            waiting.len()
        );
        reading.leader = None;
        reading.followers.clear();
        drop(reading);
        qmp.close();
        server.join();
    }

    #[test]
    fn a_caller_arms_the_watch_when_a_subscription_awaits_events() {
        let (qmp, server) = echo_client();
        let _events = qmp.subscribe();
        disarm(&qmp);
        qmp.execute_raw("query-status", json!({})).expect("reply");
        assert!(
            lock(&qmp.inner.reading).armed,
            "events would wait for the lingering background thread"
        );
        qmp.close();
        server.join();
    }

    #[test]
    fn a_stream_handed_over_non_blocking_is_made_blocking() {
        let (client, server) = echo_server();
        client.set_nonblocking(true).expect("O_NONBLOCK");
        let probe = client.try_clone().expect("dup");
        let qmp = Qmp::from_stream(client, &Config::default()).expect("connect");
        // SAFETY: F_GETFL on a descriptor `probe` owns takes no pointers.
        let flags = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&probe), libc::F_GETFL) };
        assert!(flags >= 0);
        assert_eq!(flags & libc::O_NONBLOCK, 0, "the leader's recv would spin");
        qmp.execute_raw("query-status", json!({})).expect("reply");
        qmp.close();
        server.join();
    }

    /// A write that finds QEMU gone while another thread holds the socket must not drop what
    /// QEMU said before it went (the reader delivers it, then the end of the stream).
    #[test]
    fn what_qemu_said_before_it_went_survives_a_write_that_finds_it_gone() {
        let (go, gone) = mpsc::channel::<()>();
        let (client, server) = FakeServer::spawn(move |mut c| {
            c.handshake();
            gone.recv().expect("go");
            c.event(
                "SHUTDOWN",
                json!({"guest": true, "reason": "guest-shutdown"}),
            );
            c.hang_up();
        })
        .expect("spawn");
        let qmp = Qmp::from_stream(client, &Config::default()).expect("connect");
        let events = qmp.subscribe();
        let reply = std::thread::scope(|s| {
            // Another reader holds the socket while the write fails.
            let reader = lock(&qmp.inner.read);
            go.send(()).expect("go");
            server.join();
            let quit = s.spawn(|| qmp.execute_raw("quit", json!({})));
            // The write failed (the socket is shut down after it): let the reader go.
            while !qmp.inner.conn.is_shut_down() && !quit.is_finished() {
                std::thread::yield_now();
            }
            drop(reader);
            quit.join().expect("thread")
        });
        assert!(matches!(reply, Err(Error::Disconnected)), "{reply:?}");
        let event = events
            .recv_timeout(Duration::from_secs(30))
            .expect("the SHUTDOWN QEMU sent before it went");
        assert_eq!(event.name, "SHUTDOWN");
        qmp.close();
    }

    #[test]
    fn subscribing_arms_the_watch() {
        let (qmp, server) = echo_client();
        disarm(&qmp);
        let _events = qmp.subscribe();
        assert!(lock(&qmp.inner.reading).armed);
        qmp.close();
        server.join();
    }
}
