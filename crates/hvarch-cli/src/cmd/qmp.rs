//! `hvarch qmp`: one QMP command and its reply, or an interactive QMP shell.
//!
//! ```text
//! hvarch qmp /run/hvarch/vm0/qmp.sock query-status
//! hvarch qmp /run/hvarch/vm0/qmp.sock device_del '{"id": "disk0"}'
//! hvarch qmp /run/hvarch/vm0/qmp.sock            # shell: `command {"json": "args"}` lines
//! ```
//!
//! The shell keeps a history, completes command names (from `query-commands`) with Tab,
//! prints events as they arrive, and leaves on `quit`, `exit` or end of input. A `quit` is
//! therefore never sent to QEMU from the shell: use `system_powerdown`, or the one-shot form
//! (`hvarch qmp SOCKET quit`).
//! When standard input or output is not a terminal the shell reads plain lines, without a
//! prompt, and prints replies and events in the order they arrive.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use hvarch_qmp::{Config, Event, EventSubscription, Qmp};
use serde_json::{json, Value};

use crate::line_editor::{Editor, Read};
use crate::output::{CliError, CliResult, Output};

/// Arguments of `hvarch qmp`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds to wait for the greeting and for each reply.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// The QMP socket (e.g. `<runtime_dir>/qmp.sock`, or the `qmp-user.sock` of `hvarch run`).
    pub socket: PathBuf,
    /// A command to execute (without it: an interactive shell).
    pub command: Option<String>,
    /// The command's arguments, a JSON object.
    pub arguments: Option<String>,
}

/// Runs the subcommand.
pub fn run(args: &Args) -> CliResult {
    let timeout = Duration::from_secs(args.timeout.max(1));
    let config = Config {
        greeting_timeout: timeout,
        command_timeout: timeout,
        ..Config::default()
    };
    let qmp = Qmp::connect(&args.socket, &config).map_err(|e| {
        format!(
            "cannot connect to the QMP socket {}: {e}",
            args.socket.display()
        )
    })?;
    let result = match &args.command {
        Some(command) => {
            let arguments = parse_arguments(args.arguments.as_deref())?;
            match qmp.execute_raw(command, arguments) {
                Ok(reply) => Output::stdout().line(pretty(&reply)),
                Err(e) => Err(e.to_string().into()),
            }
        }
        None if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() => {
            interactive(&qmp)
        }
        None => plain(&qmp),
    };
    qmp.close();
    result
}

/// Parses a JSON-object argument; nothing means `{}`.
pub fn parse_arguments(text: Option<&str>) -> Result<Value, String> {
    let text = text.map(str::trim).unwrap_or("");
    if text.is_empty() {
        return Ok(json!({}));
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("arguments are not JSON: {e}: {text}"))?;
    if !value.is_object() {
        return Err(format!("arguments must be a JSON object, not {text}"));
    }
    Ok(value)
}

/// Splits a shell line into a command and its arguments: `name {"a": 1}`, `name`, or a
/// whole QMP message `{"execute": "name", "arguments": {…}}`.
pub fn parse_line(line: &str) -> Result<(String, Value), String> {
    let line = line.trim();
    if line.starts_with('{') {
        let msg: Value =
            serde_json::from_str(line).map_err(|e| format!("not JSON: {e}: {line}"))?;
        let name = msg
            .get("execute")
            .and_then(Value::as_str)
            .ok_or("a JSON line needs an \"execute\" member")?;
        let arguments = msg.get("arguments").cloned().unwrap_or_else(|| json!({}));
        return Ok((name.to_owned(), arguments));
    }
    let (name, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    Ok((name.to_owned(), parse_arguments(Some(rest))?))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn event_text(event: &Event) -> String {
    format!(
        "event {}",
        serde_json::to_string(&event.to_json()).unwrap_or_default()
    )
}

/// What a shell line asks for.
enum Outcome {
    /// Leave the shell.
    Leave,
    /// Print this (a reply, an error, the help).
    Print(String),
    /// Nothing (an empty line).
    Nothing,
}

/// Executes one shell line.
fn execute_line(qmp: &Qmp, line: &str) -> Outcome {
    let line = line.trim();
    match line {
        "" => return Outcome::Nothing,
        "quit" | "exit" | "q" => return Outcome::Leave,
        "help" => {
            return Outcome::Print(
                "`command {\"json\": \"args\"}` or a QMP JSON message; Tab completes command \
                 names; `quit` leaves (to stop QEMU: system_powerdown)"
                    .into(),
            )
        }
        _ => {}
    }
    Outcome::Print(match parse_line(line) {
        Ok((name, arguments)) => match qmp.execute_raw(&name, arguments) {
            Ok(reply) => pretty(&reply),
            Err(e) => format!("error: {e}"),
        },
        Err(e) => format!("error: {e}"),
    })
}

/// What the plain shell waits for.
enum Input {
    Line(String),
    Event(Event),
    End,
}

/// The shell without a terminal: lines from stdin, replies and events on stdout, in the
/// order they arrive, printed by this thread alone.
fn plain(qmp: &Qmp) -> CliResult {
    let (tx, rx) = mpsc::channel();
    let events = qmp.subscribe();
    let mut out = Output::stdout();
    for event in qmp.take_early_events() {
        out.line(event_text(&event))?;
    }
    forward_events(events, tx.clone());
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(Input::Line(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Input::End);
    });
    while let Ok(input) = rx.recv() {
        match input {
            Input::Line(line) => match execute_line(qmp, &line) {
                Outcome::Leave => break,
                Outcome::Print(text) => out.line(text)?,
                Outcome::Nothing => {}
            },
            Input::Event(event) => out.line(event_text(&event))?,
            Input::End => break,
        }
    }
    // The events the last commands caused may still be on their way.
    while let Ok(input) = rx.recv_timeout(Duration::from_millis(100)) {
        if let Input::Event(event) = input {
            out.line(event_text(&event))?;
        }
    }
    Ok(())
}

fn forward_events(events: EventSubscription, tx: mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        for event in events {
            if tx.send(Input::Event(event)).is_err() {
                break;
            }
        }
    });
}

/// The shell on a terminal: a line editor; events are printed above the prompt as they
/// arrive, and the prompt and the line being typed are drawn again below them.
fn interactive(qmp: &Qmp) -> CliResult {
    let events = qmp.subscribe();
    let commands = qmp
        .execute_raw("query-commands", json!({}))
        .map(|list| {
            list.as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    eprintln!(
        "QEMU {}: {} commands; Tab completes, `help` for help, `quit` or Ctrl-D leaves",
        qmp.version(),
        commands.len()
    );
    let mut editor = Editor::new(commands);
    let terminal = |e: std::io::Error| CliError::from_write(&e);
    for event in qmp.take_early_events() {
        editor.print(&event_text(&event)).map_err(terminal)?;
    }
    let printer = editor.printer();
    std::thread::spawn(move || {
        for event in events {
            if printer.print(&event_text(&event)).is_err() {
                break;
            }
        }
    });
    while let Read::Line(line) = editor.read_line("qmp> ").map_err(terminal)? {
        match execute_line(qmp, &line) {
            Outcome::Leave => break,
            Outcome::Print(text) => editor.print(&text).map_err(terminal)?,
            Outcome::Nothing => {}
        }
        if !qmp.is_connected() {
            eprintln!("QMP connection closed");
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(
            parse_line("query-status").unwrap(),
            ("query-status".into(), json!({}))
        );
        assert_eq!(
            parse_line("  device_del   {\"id\": \"d0\"} ").unwrap(),
            ("device_del".into(), json!({"id": "d0"}))
        );
        assert_eq!(
            parse_line(r#"{"execute": "stop"}"#).unwrap(),
            ("stop".into(), json!({}))
        );
        assert!(parse_line("device_del [1]").is_err());
        assert!(parse_line("device_del {oops").is_err());
        assert!(parse_line(r#"{"arguments": {}}"#).is_err());
    }
}
