//! Fuzzes the QMP decoder: arbitrary bytes, split at an arbitrary point, through the line codec
//! and the session state machine (before and after negotiation). Nothing may panic.
#![no_main]

use hvarch_qmp::protocol::Session;
use hvarch_qmp::Inbound;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(split);

    // Fresh session: the input plays the greeting.
    let mut s: Session<()> = Session::new(4096, true);
    let mut out = Vec::new();
    s.feed(a, &mut out);
    s.feed(b, &mut out);
    s.eof(&mut out);

    // Negotiated session with a pending command.
    let mut s: Session<u32> = Session::new(4096, false);
    out.clear();
    let mut out2 = Vec::new();
    s.feed(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}}, \"capabilities\": []}}\n", &mut out2);
    let _ = s.negotiate();
    s.feed(b"{\"return\": {}, \"id\": 1}\n", &mut out2);
    let _ = s.start_command(&hvarch_qmp::Command::bare("query-status"), 7);
    s.feed(a, &mut out2);
    s.feed(b, &mut out2);

    let _ = Inbound::decode(data);
});
