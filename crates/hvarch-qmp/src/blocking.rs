//! The blocking client: a reader thread, writers serialised through a mutex, a timeout on every
//! wait.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use tracing::{debug, warn};

use crate::client::{
    command_helpers, command_timeout, connection_accessors, event_timeout, greeting_timeout, lock,
    write_error, Connection, EventSink, Handshake, Negotiated, Registration,
};
use crate::config::Config;
use crate::deadline::{deadline, remaining};
use crate::error::{Error, Result};
use crate::event::{Event, EventFilter};
use crate::message::Command;

type Waiter = mpsc::SyncSender<Result<Value>>;

impl crate::client::Waiter for Waiter {
    fn deliver(self, result: Result<Value>) {
        // A one-slot channel never blocks; a caller that gave up dropped the receiver.
        let _ = self.try_send(result);
    }
}

impl EventSink for mpsc::Sender<Event> {
    fn send(&self, event: Event) -> bool {
        mpsc::Sender::send(self, event).is_ok()
    }
}

struct Inner {
    conn: Arc<Connection<Waiter, mpsc::Sender<Event>>>,
    writer: Mutex<UnixStream>,
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
    reader: Mutex<Option<JoinHandle<()>>>,
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
        reader.set_read_timeout(None)?;
        // A zero timeout would be refused by the socket (it means "none" to `set_*_timeout`).
        writer.set_write_timeout(Some(config.command_timeout).filter(|t| !t.is_zero()))?;
        let inner = Arc::new(Inner {
            conn: Arc::new(Connection::new(negotiated, writer.try_clone()?, config)),
            writer: Mutex::new(writer),
        });
        let thread_inner = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("qmp-reader".into())
            .spawn(move || reader_loop(&thread_inner, reader))?;
        Ok(Qmp {
            inner,
            reader: Mutex::new(Some(handle)),
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
        self.execute_with_fds(command, timeout, Vec::new())
    }

    fn execute_with_fds(
        &self,
        command: &Command,
        timeout: Duration,
        fds: Vec<OwnedFd>,
    ) -> Result<Value> {
        let (tx, rx) = mpsc::sync_channel(1);
        let (id, bytes) = lock(&self.inner.conn.state)
            .session
            .start_command(command, tx)?;
        if let Err(e) = self.write(&bytes, &fds) {
            // A partial write would desynchronise the stream: end the session.
            warn!(command = %command.name, error = %e, "QMP write failed; closing the connection");
            let what = format!("writing `{}`", command.name);
            self.inner
                .conn
                .end(write_error(e, &what, self.config().command_timeout));
        }
        match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::Disconnected),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lock(&self.inner.conn.state).session.cancel(id);
                // The reply may have been delivered between the timeout and the cancel.
                rx.try_recv()
                    .unwrap_or_else(|_| Err(command_timeout(&command.name, timeout)))
            }
        }
    }

    fn write(&self, bytes: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
        let fds: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        let writer = lock(&self.inner.writer);
        crate::fdpass::send_all(writer.as_fd(), bytes, &fds)
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
    /// end, the reader thread is joined. Idempotent.
    pub fn close(&self) {
        let handle = lock(&self.reader).take();
        if let Some(handle) = handle {
            self.inner.conn.shutdown();
            if handle.join().is_err() {
                warn!("QMP reader thread panicked");
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

fn reader_loop(inner: &Inner, mut stream: UnixStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut actions = Vec::new();
    loop {
        let read = match stream.read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            read => read.map(|n| buf.get(..n).unwrap_or_default()),
        };
        if lock(&inner.conn.state).on_read(read, &mut actions) {
            inner.conn.shutdown();
            return;
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
