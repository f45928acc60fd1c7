//! `query-status` round trips per second against a QMP socket, for `cargo xtask bench qmp`.
//!
//! Usage: `qmp_bench <client> <socket> <count>`; prints `<client> <count> <seconds>`.
//!
//! Clients: `raw`, `blocking`, `async` (one command at a time) and `raw8`, `blocking8`,
//! `async8` (8 commands in flight: the raw client pipelines 8 on its connection, the blocking
//! client is shared by 8 threads, the async client by 8 tasks).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use hvarch_qmp::{AsyncQmp, Command, Config, Qmp};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(kind), Some(path), Some(count)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: qmp_bench <raw|blocking|async>[8] <socket> <count>".into());
    };
    let count: u32 = count.parse()?;
    let cmd = Command::bare("query-status");
    let elapsed = match kind.as_str() {
        "blocking" => {
            let qmp = Qmp::connect(path, &Config::default())?;
            let t = Instant::now();
            for _ in 0..count {
                qmp.execute_command(&cmd)?;
            }
            t.elapsed()
        }
        "async" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let qmp = AsyncQmp::connect(path, &Config::default()).await?;
                let t = Instant::now();
                for _ in 0..count {
                    qmp.execute_command(&cmd).await?;
                }
                let e = t.elapsed();
                qmp.close().await;
                Ok::<_, hvarch_qmp::Error>(e)
            })?
        }
        "blocking8" => {
            let qmp = Qmp::connect(path, &Config::default())?;
            let t = Instant::now();
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..IN_FLIGHT)
                    .map(|i| {
                        let (qmp, cmd) = (&qmp, &cmd);
                        s.spawn(move || -> hvarch_qmp::Result<()> {
                            for _ in 0..share(count, i) {
                                qmp.execute_command(cmd)?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                workers.into_iter().try_for_each(|w| match w.join() {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(_) => Err("worker panicked".to_owned()),
                })
            })?;
            t.elapsed()
        }
        "async8" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let qmp = Arc::new(AsyncQmp::connect(path, &Config::default()).await?);
                let t = Instant::now();
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..IN_FLIGHT {
                    let (qmp, cmd) = (Arc::clone(&qmp), cmd.clone());
                    tasks.spawn(async move {
                        for _ in 0..share(count, i) {
                            qmp.execute_command(&cmd).await?;
                        }
                        Ok::<_, hvarch_qmp::Error>(())
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    done.map_err(|e| hvarch_qmp::Error::Io(std::io::Error::other(e)))??;
                }
                let e = t.elapsed();
                qmp.close().await;
                Ok::<_, hvarch_qmp::Error>(e)
            })?
        }
        "raw8" => {
            // The minimal client, pipelined: keep 8 commands written ahead of the replies.
            let stream = UnixStream::connect(path)?;
            let mut w = stream.try_clone()?;
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            r.read_line(&mut line)?;
            w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
            line.clear();
            r.read_line(&mut line)?;
            let t = Instant::now();
            let mut sent = 0;
            while sent < count.min(IN_FLIGHT) {
                w.write_all(b"{\"execute\":\"query-status\"}\n")?;
                sent += 1;
            }
            let mut received = 0;
            while received < count {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    return Err("EOF".into());
                }
                if line.contains("\"return\"") {
                    received += 1;
                    if sent < count {
                        w.write_all(b"{\"execute\":\"query-status\"}\n")?;
                        sent += 1;
                    }
                }
            }
            t.elapsed()
        }
        "raw" => {
            // A minimal client: no ids routing, no threads, one line in, one line out.
            let stream = UnixStream::connect(path)?;
            let mut w = stream.try_clone()?;
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            r.read_line(&mut line)?;
            w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
            line.clear();
            r.read_line(&mut line)?;
            let t = Instant::now();
            for _ in 0..count {
                w.write_all(b"{\"execute\":\"query-status\"}\n")?;
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 {
                        return Err("EOF".into());
                    }
                    if line.contains("\"return\"") {
                        break;
                    }
                }
            }
            t.elapsed()
        }
        other => return Err(format!("unknown client {other}").into()),
    };
    println!("{kind} {count} {:.6}", elapsed.as_secs_f64());
    Ok(())
}

/// Commands in flight for the `…8` clients.
const IN_FLIGHT: u32 = 8;

/// Worker `i`'s share of `count` commands.
fn share(count: u32, i: u32) -> u32 {
    count / IN_FLIGHT + u32::from(i < count % IN_FLIGHT)
}
