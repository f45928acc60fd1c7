//! A scripted fake QMP server for tests (not part of the stable API).
//!
//! [`FakeServer::spawn`] runs a script on a thread against the server end of a socket pair and
//! returns the client end. The script drives the conversation with [`FakeConn`]: send a greeting,
//! read commands, reply in any order, emit events, misbehave, hang up.

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

/// A test hook, set once per process: called by a client after its session routed a reply to a
/// waiting caller and before the caller is given it (with the client's session lock held).
/// A test pauses here to hold a reply in that window while the caller's timeout fires.
pub static REPLY_ROUTED_HOOK: OnceLock<fn()> = OnceLock::new();

pub(crate) fn reply_routed() {
    if let Some(hook) = REPLY_ROUTED_HOOK.get() {
        hook();
    }
}

/// A scripted server thread. [`FakeServer::join`] propagates the script's panics (assertions).
#[derive(Debug)]
pub struct FakeServer {
    handle: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Runs `script` on a new thread with the server end; returns the client end and the server.
    pub fn spawn(
        script: impl FnOnce(FakeConn) + Send + 'static,
    ) -> io::Result<(UnixStream, FakeServer)> {
        let (client, server) = UnixStream::pair()?;
        server.set_read_timeout(Some(Duration::from_secs(10)))?;
        let conn = FakeConn {
            stream: server,
            buf: Vec::new(),
            fds: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("fake-qmp".into())
            .spawn(move || script(conn))?;
        Ok((
            client,
            FakeServer {
                handle: Some(handle),
            },
        ))
    }

    /// Waits for the script to finish; panics if it panicked.
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
    }
}

/// The server end of a fake QMP connection.
#[derive(Debug)]
pub struct FakeConn {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// A QEMU 10.0.2 greeting offering `oob`.
pub fn greeting_json() -> Value {
    json!({"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-1"}, "capabilities": ["oob"]}})
}

impl FakeConn {
    /// Sends raw bytes; errors (client gone) are ignored.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Sends one JSON message terminated by CRLF, as QEMU does.
    pub fn send(&mut self, msg: &Value) {
        let mut bytes = serde_json::to_vec(msg).unwrap_or_default();
        bytes.extend_from_slice(b"\r\n");
        self.send_raw(&bytes);
    }

    /// Sends the standard greeting ([`greeting_json`]).
    pub fn greet(&mut self) {
        self.send(&greeting_json());
    }

    /// Greets, accepts `qmp_capabilities`; returns the negotiation command.
    pub fn handshake(&mut self) -> Value {
        self.greet();
        let cmd = self.expect_command("qmp_capabilities");
        self.reply(&cmd, json!({}));
        cmd
    }

    /// Sends an event with a timestamp.
    pub fn event(&mut self, name: &str, data: Value) {
        self.send(&json!({"event": name, "data": data, "timestamp": {"seconds": 1_700_000_000, "microseconds": 123_456}}));
    }

    /// Reads one JSON line; `None` on EOF or timeout (10 s). Fds that arrive are kept.
    pub fn recv(&mut self) -> Option<Value> {
        self.next_line(65536)
    }

    /// Reads one JSON line a byte at a time and returns it with the descriptors that came with
    /// its bytes. The kernel hands descriptors over with the first byte of the `sendmsg` that
    /// carried them, so this tells which command's write carried them: a write that coalesced
    /// commands behind descriptors gives them to its first command. `None` on EOF or timeout
    /// (10 s). Descriptors [`recv`](Self::recv) kept come first.
    pub fn recv_with_fds(&mut self) -> Option<(Value, Vec<OwnedFd>)> {
        let cmd = self.next_line(1)?;
        Some((cmd, self.take_fds()))
    }

    /// Reads once (waiting if no complete line is buffered) and returns every complete line
    /// then buffered: the commands that arrived together. Empty on EOF or timeout (10 s).
    pub fn recv_burst(&mut self) -> Vec<Value> {
        if !self.buf.contains(&b'\n') && !self.fill(65536) {
            return Vec::new();
        }
        let mut lines = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            lines.extend(serde_json::from_slice::<Value>(&line).ok());
        }
        lines
    }

    /// The next complete line, receiving at most `chunk` bytes at a time.
    fn next_line(&mut self, chunk: usize) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return serde_json::from_slice(&line).ok();
            }
            if !self.fill(chunk) {
                return None;
            }
        }
    }

    /// Receives at most `max` bytes into the buffer, keeping the descriptors that come with
    /// them; `false` on EOF or timeout.
    fn fill(&mut self, max: usize) -> bool {
        let mut chunk = vec![0u8; max];
        match crate::fdpass::recv_with_fds(self.stream.as_fd(), &mut chunk) {
            Ok((0, _)) | Err(_) => false,
            Ok((n, fds)) => {
                self.buf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default());
                self.fds.extend(fds);
                true
            }
        }
    }

    /// Whether more has arrived (a buffered line or unread bytes), without waiting.
    pub fn has_pending(&self) -> bool {
        if self.buf.contains(&b'\n') {
            return true;
        }
        let mut byte = [0u8; 1];
        // SAFETY: `byte` is valid for a one-byte write; MSG_PEEK leaves the data queued.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.stream),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n > 0
    }

    /// Reads a command and asserts its name.
    pub fn expect_command(&mut self, name: &str) -> Value {
        let cmd = self
            .recv()
            .unwrap_or_else(|| panic!("fake server: expected `{name}`, got EOF"));
        assert_eq!(
            cmd["execute"],
            json!(name),
            "fake server: unexpected command {cmd}"
        );
        cmd
    }

    /// Fds received so far (taken).
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }

    /// Replies `{"return": value, "id": <cmd id>}`.
    pub fn reply(&mut self, cmd: &Value, value: Value) {
        self.send(&json!({"return": value, "id": cmd["id"]}));
    }

    /// Replies `{}` to each of `cmds`, all in one write (the client reads them together).
    pub fn reply_all(&mut self, cmds: &[Value]) {
        let mut bytes = Vec::new();
        for cmd in cmds {
            let _ = serde_json::to_writer(&mut bytes, &json!({"return": {}, "id": cmd["id"]}));
            bytes.extend_from_slice(b"\r\n");
        }
        self.send_raw(&bytes);
    }

    /// Replies with an error; `desc: None` omits `desc`.
    pub fn reply_error(&mut self, cmd: &Value, class: &str, desc: Option<&str>) {
        let mut error = json!({"class": class});
        if let Some(d) = desc {
            error["desc"] = json!(d);
        }
        self.send(&json!({"error": error, "id": cmd["id"]}));
    }

    /// Answers every command with `{"return": {"echo": <command>}}` until EOF.
    pub fn echo_until_eof(&mut self) {
        while let Some(cmd) = self.recv() {
            let args = cmd.get("arguments").cloned().unwrap_or(Value::Null);
            self.reply(&cmd, json!({"echo": cmd["execute"], "arguments": args}));
        }
    }

    /// Answers every command with `{}` until EOF, at QEMU's pace and in its way: waits
    /// `pause` (a waiting client is asleep by then), reads the command a byte at a time (QEMU's
    /// monitor does, so the client's bytes are consumed while it waits), waits `pause` again,
    /// replies.
    pub fn answer_slowly(&mut self, pause: Duration) {
        loop {
            std::thread::sleep(pause);
            let Some((cmd, _)) = self.recv_with_fds() else {
                return;
            };
            std::thread::sleep(pause);
            self.reply(&cmd, json!({}));
        }
    }

    /// Stops receiving: the client's next write fails with `EPIPE` (and raises `SIGPIPE` unless
    /// the writer asked not to), while the client still reads no EOF.
    pub fn shutdown_read(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Read);
    }

    /// Closes the connection (EOF for the client).
    pub fn hang_up(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The ids of the commands in `bytes` (what a client wrote: JSON lines), in order, as QEMU
/// reads them. Panics on a line that is not a JSON object with an integer `"id"`.
pub fn ids_on_the_wire(bytes: &[u8]) -> Vec<u64> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let sent: Value = serde_json::from_slice(line).expect("a JSON line");
            sent["id"].as_u64().expect("an id")
        })
        .collect()
}

/// How many times the calling thread has gone to sleep so far (its voluntary context switches,
/// `getrusage(RUSAGE_THREAD)`). `None` under a user-mode emulator (`HVARCH_TEST_RUNNER` set, as
/// `cargo xtask cross` runs the tests): the kernel then counts the emulator's own waits as the
/// thread's, several per emulated system call.
pub fn thread_sleeps() -> Option<i64> {
    if std::env::var_os("HVARCH_TEST_RUNNER").is_some() {
        return None;
    }
    // SAFETY: an all-zero `rusage` is a valid value for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_THREAD reports this thread only.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(rc, 0, "getrusage: {}", io::Error::last_os_error());
    Some(usage.ru_nvcsw)
}
