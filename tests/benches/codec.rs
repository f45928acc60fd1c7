//! Criterion benchmarks of the QMP codec and session (decode, classify, route).
#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use hvarch_qmp::codec::LineDecoder;
use hvarch_qmp::protocol::{Action, Session};
use hvarch_qmp::{Command, Inbound};

const REPLY: &[u8] =
    b"{\"return\": {\"status\": \"prelaunch\", \"running\": false}, \"id\": 7}\r\n";
const EVENT: &[u8] = b"{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 123456}, \"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"disk1\", \"path\": \"/machine/peripheral/disk1\"}}\r\n";

fn bench(c: &mut Criterion) {
    let stream: Vec<u8> = std::iter::repeat_n([REPLY, EVENT].concat(), 500)
        .flatten()
        .collect();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("split_lines_1000", |b| {
        b.iter(|| {
            let mut d = LineDecoder::new(1 << 24);
            let mut n = 0;
            for chunk in stream.chunks(4096) {
                d.push(chunk);
                while let Ok(Some(_)) = d.next_line() {
                    n += 1;
                }
            }
            black_box(n)
        })
    });
    g.bench_function("decode_classify_1000", |b| {
        b.iter(|| {
            let mut d = LineDecoder::new(1 << 24);
            d.push(&stream);
            let mut n = 0;
            while let Ok(Some(line)) = d.next_line() {
                if Inbound::decode(line).is_ok() {
                    n += 1;
                }
            }
            black_box(n)
        })
    });
    g.finish();

    c.bench_function("session_roundtrip", |b| {
        let mut s: Session<()> = Session::new(1 << 24, false);
        let mut out = Vec::new();
        s.feed(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": []}}\n", &mut out);
        let _ = s.negotiate();
        s.feed(b"{\"return\": {}, \"id\": 1}\n", &mut out);
        let cmd = Command::bare("query-status");
        b.iter(|| {
            out.clear();
            let (id, bytes) = s.start_command(&cmd, ()).expect("ready");
            black_box(bytes);
            let reply = format!("{{\"return\": {{\"status\": \"prelaunch\", \"running\": false}}, \"id\": {id}}}\r\n");
            s.feed(reply.as_bytes(), &mut out);
            assert!(matches!(out.first(), Some(Action::Reply { .. })));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
