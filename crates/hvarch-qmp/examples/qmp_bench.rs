//! `query-status` round trips per second against a QMP socket, for `cargo xtask bench qmp`.
//!
//! Usage: `qmp_bench <blocking|async|raw> <socket> <count>`; prints `<client> <count> <seconds>`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use hvarch_qmp::{AsyncQmp, Command, Config, Qmp};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(kind), Some(path), Some(count)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: qmp_bench <blocking|async|raw> <socket> <count>".into());
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
