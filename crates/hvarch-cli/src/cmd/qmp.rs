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
//! When standard input is not a terminal the shell reads plain lines, without a prompt.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hvarch_qmp::{Config, Qmp};
use rustyline::completion::Completer;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, ExternalPrinter, Helper};
use serde_json::{json, Value};

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
pub fn run(args: &Args) -> Result<(), String> {
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
            qmp.execute_raw(command, arguments)
                .map(|reply| println!("{}", pretty(&reply)))
                .map_err(|e| e.to_string())
        }
        None => shell(&qmp),
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

fn event_text(event: &hvarch_qmp::Event) -> String {
    format!(
        "event {}",
        serde_json::to_string(&event.to_json()).unwrap_or_default()
    )
}

/// Executes one shell line; `false` to leave.
fn execute_line(qmp: &Qmp, line: &str) -> bool {
    let line = line.trim();
    match line {
        "" => return true,
        "quit" | "exit" | "q" => return false,
        "help" => {
            println!(
                "`command {{\"json\": \"args\"}}` or a QMP JSON message; Tab completes \
                 command names; `quit` leaves (to stop QEMU: system_powerdown)"
            );
            return true;
        }
        _ => {}
    }
    match parse_line(line) {
        Ok((name, arguments)) => match qmp.execute_raw(&name, arguments) {
            Ok(reply) => println!("{}", pretty(&reply)),
            Err(e) => println!("error: {e}"),
        },
        Err(e) => println!("error: {e}"),
    }
    let _ = std::io::stdout().flush();
    true
}

fn shell(qmp: &Qmp) -> Result<(), String> {
    let events = qmp.subscribe();
    for event in qmp.take_early_events() {
        println!("{}", event_text(&event));
    }
    if !std::io::stdin().is_terminal() {
        std::thread::spawn(move || {
            for event in events {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", event_text(&event));
                let _ = out.flush();
            }
        });
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| format!("read stdin: {e}"))?;
            if !execute_line(qmp, &line) {
                break;
            }
        }
        // Let the event printer show what the last commands caused.
        std::thread::sleep(Duration::from_millis(100));
        return Ok(());
    }

    let commands = qmp
        .execute_raw("query-commands", json!({}))
        .map(|list| {
            let mut names: Vec<String> = list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect();
            names.sort();
            names
        })
        .unwrap_or_default();
    eprintln!(
        "QEMU {}: {} commands; Tab completes, `help` for help, `quit` or Ctrl-D leaves",
        qmp.version(),
        commands.len()
    );
    // Tab completes the longest common prefix, a second Tab lists the candidates.
    let config = rustyline::Config::builder()
        .completion_type(rustyline::CompletionType::List)
        .auto_add_history(false)
        .build();
    let mut editor: Editor<CommandNames, rustyline::history::DefaultHistory> =
        Editor::with_config(config).map_err(|e| format!("line editor: {e}"))?;
    editor.set_helper(Some(CommandNames(Arc::new(commands))));
    match editor.create_external_printer() {
        Ok(mut printer) => {
            std::thread::spawn(move || {
                for event in events {
                    if printer.print(format!("{}\n", event_text(&event))).is_err() {
                        break;
                    }
                }
            });
        }
        Err(_) => {
            std::thread::spawn(move || {
                for event in events {
                    println!("{}", event_text(&event));
                }
            });
        }
    }
    loop {
        match editor.readline("qmp> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if !execute_line(qmp, &line) {
                    break;
                }
                if !qmp.is_connected() {
                    eprintln!("QMP connection closed");
                    break;
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(format!("line editor: {e}")),
        }
    }
    Ok(())
}

/// Tab completion of the first word from the server's command names.
struct CommandNames(Arc<Vec<String>>);

impl Completer for CommandNames {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let head = &line[..pos];
        if head.contains(char::is_whitespace) {
            return Ok((pos, Vec::new()));
        }
        let matches = self
            .0
            .iter()
            .filter(|name| name.starts_with(head))
            .cloned()
            .collect();
        Ok((0, matches))
    }
}

impl Hinter for CommandNames {
    type Hint = String;
}
impl Highlighter for CommandNames {}
impl Validator for CommandNames {}
impl Helper for CommandNames {}

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
