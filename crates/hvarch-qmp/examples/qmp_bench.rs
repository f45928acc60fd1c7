//! `query-status` round trips against a QMP socket, for `cargo xtask bench qmp`.
//!
//! Usage: `qmp_bench <client> <socket> <count>`; prints
//! `<client> <count> <seconds> <cpu> <sleeps>`, where `cpu` is the CPU time (user + system,
//! `getrusage` of this process) the client spent in the measured part, in seconds, and `sleeps`
//! the times its threads went to sleep meanwhile (voluntary context switches).
//!
//! Clients:
//! - `blocking`, `async`: hvarch-qmp, one typed `execute(&query_status {})` at a time.
//! - `blocking8`, `async8`: 8 in flight: the blocking client shared by 8 threads, the async
//!   client by 8 tasks (current-thread runtime), each executing typed `query_status`.
//! - `raw`, `raw8`, `rawbatch8`: a minimal client (no ids, no routing, one thread; replies are
//!   found by scanning for `"return"`): one at a time, a sliding window of 8, and batches of 8
//!   (write 8 in one write, read 8). They negotiate `oob`, as hvarch-qmp does by default;
//!   `raw-nooob` and `raw8-nooob` negotiate no capability; `raw-ids` and `raw8-ids` send each
//!   command with an `"id"`, as hvarch-qmp does (the same bytes on the wire: the smallest id
//!   no command in flight holds, so `1` one at a time and `1` to `8` in turn with 8 in flight).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvarch_qmp::qapi_qmp::query_status;
use hvarch_qmp::{AsyncQmp, Config, Qmp};

/// Commands in flight for the `…8` clients.
const IN_FLIGHT: u32 = 8;

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(kind), Some(path), Some(count)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: qmp_bench <client> <socket> <count>".into());
    };
    let count: u32 = count.parse()?;
    let (elapsed, used) = match kind.as_str() {
        "blocking" => blocking(path, count, 1)?,
        "blocking8" => blocking(path, count, IN_FLIGHT)?,
        "async" => tokio_client(path, count, 1)?,
        "async8" => tokio_client(path, count, IN_FLIGHT)?,
        "raw" => Raw::connect(path, true, false)?.run(count, Raw::sequential)?,
        "raw-nooob" => Raw::connect(path, false, false)?.run(count, Raw::sequential)?,
        "raw-ids" => Raw::connect(path, true, true)?.run(count, Raw::sequential)?,
        "raw8" => Raw::connect(path, true, false)?.run(count, Raw::window)?,
        "raw8-nooob" => Raw::connect(path, false, false)?.run(count, Raw::window)?,
        "raw8-ids" => Raw::connect(path, true, true)?.run(count, Raw::window)?,
        "rawbatch8" => Raw::connect(path, true, false)?.run(count, Raw::batches)?,
        other => return Err(format!("unknown client {other}").into()),
    };
    println!(
        "{kind} {count} {:.6} {:.6} {}",
        elapsed.as_secs_f64(),
        used.cpu.as_secs_f64(),
        used.sleeps
    );
    Ok(())
}

/// What the process has used so far: CPU time (user + system) and voluntary context switches.
#[derive(Debug, Clone, Copy)]
struct Usage {
    cpu: Duration,
    sleeps: i64,
}

impl Usage {
    fn now() -> Usage {
        // SAFETY: an all-zero `rusage` is a valid value for getrusage to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable rusage.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        let tv = |t: libc::timeval| {
            Duration::new(
                u64::try_from(t.tv_sec).unwrap_or(0),
                u32::try_from(t.tv_usec).unwrap_or(0) * 1000,
            )
        };
        Usage {
            cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
            sleeps: usage.ru_nvcsw,
        }
    }

    /// What was used since `start`.
    fn since(start: Usage) -> Usage {
        let now = Usage::now();
        Usage {
            cpu: now.cpu.saturating_sub(start.cpu),
            sleeps: now.sleeps - start.sleeps,
        }
    }
}

/// A measured run: wall-clock time and what the process used.
type Measured = (Duration, Usage);

/// Runs `f`, returning its wall-clock time and what it used.
fn measure<E>(f: impl FnOnce() -> Result<(), E>) -> Result<Measured, E> {
    let (t, start) = (Instant::now(), Usage::now());
    f()?;
    Ok((t.elapsed(), Usage::since(start)))
}

/// Worker `i`'s share of `count` commands among `workers`.
fn share(count: u32, workers: u32, i: u32) -> u32 {
    count / workers + u32::from(i < count % workers)
}

fn blocking(path: &str, count: u32, workers: u32) -> Result<Measured, BoxError> {
    let qmp = Qmp::connect(path, &Config::default())?;
    let measured = measure(|| {
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..workers)
                .map(|i| {
                    let qmp = &qmp;
                    s.spawn(move || -> hvarch_qmp::Result<()> {
                        for _ in 0..share(count, workers, i) {
                            qmp.execute(&query_status {})?;
                        }
                        Ok(())
                    })
                })
                .collect();
            threads.into_iter().try_for_each(|t| match t.join() {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err("worker panicked".to_owned()),
            })
        })
    })?;
    qmp.close();
    Ok(measured)
}

fn tokio_client(path: &str, count: u32, workers: u32) -> Result<Measured, BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let measured = rt.block_on(async {
        let qmp = Arc::new(AsyncQmp::connect(path, &Config::default()).await?);
        let (t, start) = (Instant::now(), Usage::now());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..workers {
            let qmp = Arc::clone(&qmp);
            tasks.spawn(async move {
                for _ in 0..share(count, workers, i) {
                    qmp.execute(&query_status {}).await?;
                }
                Ok::<_, hvarch_qmp::Error>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| hvarch_qmp::Error::Io(std::io::Error::other(e)))??;
        }
        let measured = (t.elapsed(), Usage::since(start));
        qmp.close().await;
        Ok::<_, hvarch_qmp::Error>(measured)
    })?;
    Ok(measured)
}

/// The minimal client.
struct Raw {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    line: String,
    /// How many commands were sent, when commands carry an id.
    id: Option<u64>,
    /// How many commands are in flight at most (the ids cycle through `1..=window`).
    window: u64,
    command: Vec<u8>,
}

const QUERY: &[u8] = b"{\"execute\":\"query-status\"}\n";

impl Raw {
    fn connect(path: &str, oob: bool, ids: bool) -> Result<Raw, BoxError> {
        let stream = UnixStream::connect(path)?;
        let mut raw = Raw {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            line: String::new(),
            id: ids.then_some(0),
            window: 1,
            command: Vec::with_capacity(64),
        };
        raw.reader.read_line(&mut raw.line)?;
        let negotiate: &[u8] = if oob {
            b"{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[\"oob\"]}}\n"
        } else {
            b"{\"execute\":\"qmp_capabilities\"}\n"
        };
        raw.writer.write_all(negotiate)?;
        raw.next_return()?;
        Ok(raw)
    }

    fn run(
        mut self,
        count: u32,
        how: fn(&mut Raw, u32) -> Result<(), BoxError>,
    ) -> Result<Measured, BoxError> {
        measure(|| how(&mut self, count))
    }

    /// Reads lines until a reply (`"return"`); events are skipped.
    fn next_return(&mut self) -> Result<(), BoxError> {
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line)? == 0 {
                return Err("EOF".into());
            }
            if self.line.contains("\"return\"") {
                return Ok(());
            }
        }
    }

    /// Writes one `query-status` (with the next id, when commands carry one).
    fn query(&mut self) -> std::io::Result<()> {
        let Some(id) = self.id.as_mut() else {
            return self.writer.write_all(QUERY);
        };
        // Replies come in order, so the id freed by the last reply is the oldest one: hvarch-qmp's
        // smallest free id cycles through 1..=window as this does.
        let wire_id = *id % self.window + 1;
        *id += 1;
        self.command.clear();
        writeln!(
            self.command,
            "{{\"execute\":\"query-status\",\"id\":{wire_id}}}"
        )?;
        self.writer.write_all(&self.command)
    }

    /// One command at a time.
    fn sequential(&mut self, count: u32) -> Result<(), BoxError> {
        for _ in 0..count {
            self.query()?;
            self.next_return()?;
        }
        Ok(())
    }

    /// A sliding window: 8 written ahead of the replies, one more for each reply.
    fn window(&mut self, count: u32) -> Result<(), BoxError> {
        self.window = u64::from(IN_FLIGHT);
        let mut sent = 0;
        while sent < count.min(IN_FLIGHT) {
            self.query()?;
            sent += 1;
        }
        for _ in 0..count {
            self.next_return()?;
            if sent < count {
                self.query()?;
                sent += 1;
            }
        }
        Ok(())
    }

    /// Batches: 8 commands in one write, then their 8 replies.
    fn batches(&mut self, count: u32) -> Result<(), BoxError> {
        let batch = QUERY.repeat(IN_FLIGHT as usize);
        let mut done = 0;
        while done < count {
            let n = (count - done).min(IN_FLIGHT);
            let bytes = batch.get(..QUERY.len() * n as usize).unwrap_or_default();
            self.writer.write_all(bytes)?;
            for _ in 0..n {
                self.next_return()?;
            }
            done += n;
        }
        Ok(())
    }
}
