//! A small line editor for the QMP shell: history, Tab completion of command names, and
//! output from other threads (QMP events) printed above the prompt, with the prompt and the
//! line being typed drawn again below it.
//!
//! Why not rustyline's `ExternalPrinter`: with one, rustyline (up to 18) waits for input
//! with `select(2)` on the terminal, not on the bytes it has already read. Keys that arrive
//! together (typed ahead while a command runs, pasted, sent by a script) are read in one
//! chunk and all but the first sit unseen until the next key: `query-status` shows as `q`
//! and runs only after another Enter (rustyline issue #976, fixed in 19, which needs a newer
//! Rust than hvarch's 1.85). Here every byte read is decoded at once.
//!
//! The parts are sans-IO and tested alone: [`KeyDecoder`] turns bytes into [`Key`]s,
//! [`Editing`] applies keys to the line and history, [`draw`] renders prompt and line for a
//! terminal of a given width. [`Editor`] and [`Printer`] do the I/O, sharing one lock so a
//! line is never drawn while another thread prints.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Read as _, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::terminal::{self, Raw, RawMode};

/// A key, decoded from the terminal's bytes (emacs-style bindings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// A character to insert.
    Char(char),
    /// Enter (CR or LF).
    Enter,
    /// Backspace (DEL or Ctrl-H).
    Backspace,
    /// Delete, the key (`ESC [ 3 ~`).
    Delete,
    /// Left arrow, Ctrl-B.
    Left,
    /// Right arrow, Ctrl-F.
    Right,
    /// Home, Ctrl-A.
    Home,
    /// End, Ctrl-E.
    End,
    /// Up arrow, Ctrl-P: the previous history entry.
    Up,
    /// Down arrow, Ctrl-N: the next history entry.
    Down,
    /// Tab: complete the command name.
    Tab,
    /// Ctrl-C: abandon the line.
    Interrupt,
    /// Ctrl-D: end of input on an empty line, else Delete.
    EndOfInput,
    /// Ctrl-K: delete to the end of the line.
    KillToEnd,
    /// Ctrl-U: delete to the start of the line.
    KillToStart,
    /// Ctrl-W: delete the word before the cursor.
    KillWord,
    /// Ctrl-L: clear the screen.
    ClearScreen,
}

/// Turns terminal bytes into keys; a sequence split across reads is completed by the next.
#[derive(Debug, Default)]
pub struct KeyDecoder {
    pending: Vec<u8>,
}

enum Decoded {
    Key(Key, usize),
    Skip(usize),
    Incomplete,
}

impl KeyDecoder {
    /// Decodes `bytes` (after what was pending) and appends the keys to `keys`.
    pub fn feed(&mut self, bytes: &[u8], keys: &mut VecDeque<Key>) {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        while at < self.pending.len() {
            match decode(&self.pending[at..]) {
                Decoded::Key(key, used) => {
                    keys.push_back(key);
                    at += used;
                }
                Decoded::Skip(used) => at += used,
                Decoded::Incomplete => break,
            }
        }
        self.pending.drain(..at);
    }
}

fn decode(bytes: &[u8]) -> Decoded {
    let key = match bytes[0] {
        b'\r' | b'\n' => Key::Enter,
        0x7f | 0x08 => Key::Backspace,
        b'\t' => Key::Tab,
        0x01 => Key::Home,
        0x02 => Key::Left,
        0x03 => Key::Interrupt,
        0x04 => Key::EndOfInput,
        0x05 => Key::End,
        0x06 => Key::Right,
        0x0b => Key::KillToEnd,
        0x0c => Key::ClearScreen,
        0x0e => Key::Down,
        0x10 => Key::Up,
        0x15 => Key::KillToStart,
        0x17 => Key::KillWord,
        0x1b => return escape(bytes),
        c if c < 0x20 => return Decoded::Skip(1),
        _ => return utf8(bytes),
    };
    Decoded::Key(key, 1)
}

/// `ESC [ …` (CSI) and `ESC O …` (SS3) sequences; a lone Escape is dropped.
fn escape(bytes: &[u8]) -> Decoded {
    match bytes.get(1) {
        None => Decoded::Incomplete,
        Some(b'[') => csi(bytes),
        Some(b'O') => match bytes.get(2) {
            None => Decoded::Incomplete,
            Some(&last) => match arrow(last) {
                Some(key) => Decoded::Key(key, 3),
                None => Decoded::Skip(3),
            },
        },
        Some(_) => Decoded::Skip(1),
    }
}

fn arrow(last: u8) -> Option<Key> {
    Some(match last {
        b'A' => Key::Up,
        b'B' => Key::Down,
        b'C' => Key::Right,
        b'D' => Key::Left,
        b'H' => Key::Home,
        b'F' => Key::End,
        _ => return None,
    })
}

/// `ESC [ parameters final`: parameters and intermediates are 0x20..=0x3f, the final byte
/// 0x40..=0x7e. Unknown sequences are skipped whole; a malformed one up to the bad byte.
fn csi(bytes: &[u8]) -> Decoded {
    let mut end = 2;
    while end < bytes.len() && (0x20..=0x3f).contains(&bytes[end]) {
        end += 1;
    }
    let Some(&last) = bytes.get(end) else {
        return Decoded::Incomplete;
    };
    if !(0x40..=0x7e).contains(&last) {
        return Decoded::Skip(end);
    }
    let used = end + 1;
    let key = match (&bytes[2..end], last) {
        (b"1" | b"7", b'~') => Key::Home,
        (b"4" | b"8", b'~') => Key::End,
        (b"3", b'~') => Key::Delete,
        (_, last) => match arrow(last) {
            Some(key) => key,
            None => return Decoded::Skip(used),
        },
    };
    Decoded::Key(key, used)
}

fn utf8(bytes: &[u8]) -> Decoded {
    let len = match bytes[0] {
        0x20..=0x7e => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return Decoded::Skip(1),
    };
    if bytes.len() < len {
        // Complete so far? Then wait for the rest; else the first byte is garbage.
        return match std::str::from_utf8(bytes) {
            Err(e) if e.error_len().is_none() => Decoded::Incomplete,
            _ => Decoded::Skip(1),
        };
    }
    match std::str::from_utf8(&bytes[..len]) {
        Ok(text) => match text.chars().next() {
            Some(c) if !c.is_control() => Decoded::Key(Key::Char(c), len),
            _ => Decoded::Skip(len),
        },
        Err(_) => Decoded::Skip(1),
    }
}

/// What a key did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The line changed (or the cursor moved): draw it again.
    Redraw,
    /// Enter: the line is done.
    Accept(String),
    /// Ctrl-C: abandon the line (it stays as typed until [`Editing::clear`]).
    Interrupted,
    /// Ctrl-D on an empty line.
    EndOfInput,
    /// A second Tab with several candidates: show them.
    Candidates(Vec<String>),
    /// Ctrl-L.
    ClearScreen,
}

/// The line being edited, the history and the completion candidates.
#[derive(Debug, Default)]
pub struct Editing {
    line: Vec<char>,
    cursor: usize,
    history: Vec<String>,
    /// The history entry shown, while browsing it.
    browsing: Option<usize>,
    /// The line typed before browsing began.
    draft: Vec<char>,
    /// Sorted names Tab completes the first word from.
    names: Vec<String>,
    /// Whether the previous key was a Tab that could not complete further.
    tabbed: bool,
}

impl Editing {
    /// An empty line completing from `names`.
    pub fn new(mut names: Vec<String>) -> Editing {
        names.sort();
        names.dedup();
        Editing {
            names,
            ..Editing::default()
        }
    }

    /// The line, as text.
    pub fn text(&self) -> String {
        self.line.iter().collect()
    }

    /// The line's characters and the cursor's index in them.
    pub fn line(&self) -> (&[char], usize) {
        (&self.line, self.cursor)
    }

    /// Starts a new, empty line.
    pub fn clear(&mut self) {
        self.line.clear();
        self.cursor = 0;
        self.browsing = None;
        self.tabbed = false;
    }

    /// Moves the cursor to the end of the line.
    pub fn cursor_to_end(&mut self) {
        self.cursor = self.line.len();
    }

    /// Applies `key`.
    pub fn apply(&mut self, key: Key) -> Step {
        let tabbed = std::mem::take(&mut self.tabbed);
        match key {
            Key::Char(c) => {
                self.line.insert(self.cursor, c);
                self.cursor += 1;
            }
            Key::Enter => {
                let text = self.text();
                if !text.trim().is_empty() && self.history.last() != Some(&text) {
                    self.history.push(text.clone());
                }
                self.clear();
                return Step::Accept(text);
            }
            Key::Backspace => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    self.line.remove(self.cursor);
                }
            }
            Key::EndOfInput if self.line.is_empty() => return Step::EndOfInput,
            Key::Delete | Key::EndOfInput => {
                if self.cursor < self.line.len() {
                    self.line.remove(self.cursor);
                }
            }
            Key::Left => self.cursor = self.cursor.saturating_sub(1),
            Key::Right => self.cursor = (self.cursor + 1).min(self.line.len()),
            Key::Home => self.cursor = 0,
            Key::End => self.cursor = self.line.len(),
            Key::Up => self.browse_back(),
            Key::Down => self.browse_forward(),
            Key::Tab => return self.complete(tabbed),
            Key::Interrupt => return Step::Interrupted,
            Key::KillToEnd => self.line.truncate(self.cursor),
            Key::KillToStart => {
                self.line.drain(..self.cursor);
                self.cursor = 0;
            }
            Key::KillWord => {
                let mut start = self.cursor;
                while start > 0 && self.line[start - 1].is_whitespace() {
                    start -= 1;
                }
                while start > 0 && !self.line[start - 1].is_whitespace() {
                    start -= 1;
                }
                self.line.drain(start..self.cursor);
                self.cursor = start;
            }
            Key::ClearScreen => return Step::ClearScreen,
        }
        Step::Redraw
    }

    fn show(&mut self, line: Vec<char>) {
        self.line = line;
        self.cursor = self.line.len();
    }

    fn browse_back(&mut self) {
        let index = match self.browsing {
            None if self.history.is_empty() => return,
            None => {
                self.draft = std::mem::take(&mut self.line);
                self.history.len() - 1
            }
            Some(index) => index.saturating_sub(1),
        };
        self.browsing = Some(index);
        self.show(self.history[index].chars().collect());
    }

    fn browse_forward(&mut self) {
        let Some(index) = self.browsing else {
            return;
        };
        if index + 1 < self.history.len() {
            self.browsing = Some(index + 1);
            self.show(self.history[index + 1].chars().collect());
        } else {
            self.browsing = None;
            let draft = std::mem::take(&mut self.draft);
            self.show(draft);
        }
    }

    /// Completes the first word to the candidates' longest common prefix; a second Tab
    /// that cannot complete further lists them.
    fn complete(&mut self, tabbed: bool) -> Step {
        let head: String = self.line[..self.cursor].iter().collect();
        if head.contains(char::is_whitespace) {
            return Step::Redraw;
        }
        let candidates: Vec<&String> = self.names.iter().filter(|n| n.starts_with(&head)).collect();
        let Some(first) = candidates.first() else {
            return Step::Redraw;
        };
        let mut prefix: &str = first;
        for name in &candidates[1..] {
            let common = prefix
                .char_indices()
                .zip(name.chars())
                .find(|((_, a), b)| a != b)
                .map_or(prefix.len().min(name.len()), |((i, _), _)| i);
            prefix = &prefix[..common];
        }
        let mut completion: Vec<char> = prefix.chars().collect();
        if candidates.len() == 1 {
            completion.push(' ');
        }
        if completion.len() > self.cursor {
            let grew = completion.len() - self.cursor;
            self.line.splice(..self.cursor, completion);
            self.cursor += grew;
            return Step::Redraw;
        }
        if tabbed {
            return Step::Candidates(candidates.into_iter().cloned().collect());
        }
        self.tabbed = true;
        Step::Redraw
    }
}

/// The bytes that draw `prompt` and `line` (cursor at index `cursor`) on a terminal
/// `width` columns wide, starting from a cursor `cursor_row` rows below the row where the
/// prompt starts (0 for a fresh prompt at column 0, else what the previous draw returned).
/// Returns them and the cursor's row below the prompt's start afterwards. One column per
/// character (what QMP's ASCII names and JSON need).
pub fn draw(
    prompt: &str,
    line: &[char],
    cursor: usize,
    width: usize,
    cursor_row: usize,
) -> (String, usize) {
    let width = width.max(1);
    let mut out = String::new();
    erase(&mut out, cursor_row);
    out.push_str(prompt);
    out.extend(line.iter());
    let start = prompt.chars().count();
    let end = start + line.len();
    // Text ending at the right margin leaves the cursor there, pending a wrap: wrap now.
    if end > 0 && end % width == 0 {
        out.push_str("\r\n");
    }
    let at = start + cursor.min(line.len());
    let (row, column) = (at / width, at % width);
    let up = end / width - row;
    if up > 0 {
        let _ = write!(out, "\x1b[{up}A");
    }
    out.push('\r');
    if column > 0 {
        let _ = write!(out, "\x1b[{column}C");
    }
    (out, row)
}

/// Appends the bytes that move from `cursor_row` to the prompt's start and clear below.
fn erase(out: &mut String, cursor_row: usize) {
    if cursor_row > 0 {
        let _ = write!(out, "\x1b[{cursor_row}A");
    }
    out.push_str("\r\x1b[J");
}

/// What [`Editor::read_line`] read.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// A line (Enter pressed).
    Line(String),
    /// Ctrl-D on an empty line, or the end of the terminal's input.
    EndOfInput,
}

/// The terminal's state, shared by the editor and its printers.
struct Screen {
    editing: Editing,
    prompt: String,
    /// Whether a prompt and line are on screen (a line is being read).
    active: bool,
    /// The cursor's row below the prompt's start.
    cursor_row: usize,
}

impl Screen {
    fn write(&self, text: &str) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }

    fn redraw(&mut self) -> io::Result<()> {
        let (line, cursor) = self.editing.line();
        let width = terminal::columns(io::stdout().as_raw_fd());
        let (bytes, row) = draw(&self.prompt, line, cursor, width, self.cursor_row);
        self.cursor_row = row;
        self.write(&bytes)
    }

    /// Leaves the line on screen as it is and moves below it.
    fn leave_line(&mut self) -> io::Result<()> {
        self.editing.cursor_to_end();
        self.redraw()?;
        self.cursor_row = 0;
        self.write("\r\n")
    }

    fn print(&mut self, text: &str) -> io::Result<()> {
        if !self.active {
            return self.write(&format!("{text}\n"));
        }
        let mut out = String::new();
        erase(&mut out, self.cursor_row);
        self.cursor_row = 0;
        out.push_str(&text.replace('\n', "\r\n"));
        out.push_str("\r\n");
        self.write(&out)?;
        self.redraw()
    }
}

fn lock(screen: &Mutex<Screen>) -> MutexGuard<'_, Screen> {
    screen
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Prints lines from any thread: above the prompt while a line is being read (which is then
/// drawn again), else as they are.
#[derive(Clone)]
pub struct Printer(Arc<Mutex<Screen>>);

impl Printer {
    /// Prints `text` and a newline.
    pub fn print(&self, text: &str) -> io::Result<()> {
        lock(&self.0).print(text)
    }
}

/// Reads lines from the terminal on standard input, drawing on standard output (both must
/// be terminals).
pub struct Editor {
    screen: Arc<Mutex<Screen>>,
    decoder: KeyDecoder,
    /// Keys read but not used yet (typed ahead of the line being read).
    keys: VecDeque<Key>,
}

impl Editor {
    /// An editor completing command names from `names`.
    pub fn new(names: Vec<String>) -> Editor {
        Editor {
            screen: Arc::new(Mutex::new(Screen {
                editing: Editing::new(names),
                prompt: String::new(),
                active: false,
                cursor_row: 0,
            })),
            decoder: KeyDecoder::default(),
            keys: VecDeque::new(),
        }
    }

    /// A printer for other threads.
    pub fn printer(&self) -> Printer {
        Printer(Arc::clone(&self.screen))
    }

    /// Prints `text` and a newline (see [`Printer::print`]).
    pub fn print(&self, text: &str) -> io::Result<()> {
        lock(&self.screen).print(text)
    }

    /// Shows `prompt` and reads a line, with the terminal in raw mode meanwhile.
    pub fn read_line(&mut self, prompt: &str) -> io::Result<Read> {
        let stdin = io::stdin();
        let _raw = RawMode::enable(stdin.as_raw_fd(), Raw::Editor).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "standard input is not a terminal",
            )
        })?;
        {
            let mut screen = lock(&self.screen);
            screen.prompt = prompt.to_owned();
            screen.editing.clear();
            screen.active = true;
            screen.cursor_row = 0;
            screen.redraw()?;
        }
        let result = self.edit();
        lock(&self.screen).active = false;
        result
    }

    fn edit(&mut self) -> io::Result<Read> {
        let mut buffer = [0u8; 1024];
        loop {
            let Some(key) = self.keys.pop_front() else {
                let read = match io::stdin().lock().read(&mut buffer) {
                    Ok(read) => read,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if read == 0 {
                    lock(&self.screen).leave_line()?;
                    return Ok(Read::EndOfInput);
                }
                self.decoder.feed(&buffer[..read], &mut self.keys);
                continue;
            };
            let mut screen = lock(&self.screen);
            match screen.editing.apply(key) {
                Step::Redraw => screen.redraw()?,
                Step::Accept(line) => {
                    screen.editing.show(line.chars().collect());
                    screen.leave_line()?;
                    screen.editing.clear();
                    return Ok(Read::Line(line));
                }
                Step::EndOfInput => {
                    screen.leave_line()?;
                    return Ok(Read::EndOfInput);
                }
                Step::Interrupted => {
                    screen.editing.cursor_to_end();
                    screen.redraw()?;
                    screen.write("^C\r\n")?;
                    screen.cursor_row = 0;
                    screen.editing.clear();
                    screen.redraw()?;
                }
                Step::Candidates(names) => {
                    let typed = screen.editing.line.clone();
                    let cursor = screen.editing.cursor;
                    screen.leave_line()?;
                    screen.write(&format!("{}\r\n", names.join("  ")))?;
                    screen.editing.line = typed;
                    screen.editing.cursor = cursor;
                    screen.redraw()?;
                }
                Step::ClearScreen => {
                    screen.write("\x1b[H\x1b[2J")?;
                    screen.cursor_row = 0;
                    screen.redraw()?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(bytes: &[u8]) -> Vec<Key> {
        let mut decoder = KeyDecoder::default();
        let mut keys = VecDeque::new();
        decoder.feed(bytes, &mut keys);
        keys.into()
    }

    #[test]
    fn decodes_keys_arriving_together() {
        assert_eq!(keys(b"ab\r"), [Key::Char('a'), Key::Char('b'), Key::Enter]);
        assert_eq!(
            keys(b"\x1b[A\x1b[B\x1b[C\x1b[D\x1bOH\x1b[4~\x1b[3~\x1b[1;5C"),
            [
                Key::Up,
                Key::Down,
                Key::Right,
                Key::Left,
                Key::Home,
                Key::End,
                Key::Delete,
                Key::Right
            ]
        );
        assert_eq!(
            keys("é\u{7f}\x03\x04\x15\x17\x0b".as_bytes()),
            [
                Key::Char('é'),
                Key::Backspace,
                Key::Interrupt,
                Key::EndOfInput,
                Key::KillToStart,
                Key::KillWord,
                Key::KillToEnd
            ]
        );
        // A lone Escape and unknown sequences are dropped; the keys after them are not.
        assert_eq!(
            keys(b"\x1bx\x1b[200~y\x1b[Z"),
            [Key::Char('x'), Key::Char('y')]
        );
    }

    #[test]
    fn sequences_split_across_reads() {
        let mut decoder = KeyDecoder::default();
        let mut keys = VecDeque::new();
        for chunk in [&b"\x1b"[..], b"[", b"3", b"~\xc3", b"\xa9q"] {
            decoder.feed(chunk, &mut keys);
        }
        assert_eq!(
            Vec::from(keys),
            [Key::Delete, Key::Char('é'), Key::Char('q')]
        );
    }

    fn type_text(editing: &mut Editing, text: &str) {
        for c in text.chars() {
            editing.apply(Key::Char(c));
        }
    }

    #[test]
    fn editing_and_history() {
        let mut e = Editing::new(Vec::new());
        type_text(&mut e, "query-status");
        e.apply(Key::Home);
        e.apply(Key::Delete);
        e.apply(Key::Char('Q'));
        assert_eq!(e.text(), "Query-status");
        e.apply(Key::End);
        e.apply(Key::KillWord);
        assert_eq!(e.text(), "");
        type_text(&mut e, "stop now");
        e.apply(Key::KillWord);
        assert_eq!(e.apply(Key::Enter), Step::Accept("stop ".into()));
        type_text(&mut e, "cont");
        assert_eq!(e.apply(Key::Enter), Step::Accept("cont".into()));
        type_text(&mut e, "dra");
        e.apply(Key::Up);
        assert_eq!(e.text(), "cont");
        e.apply(Key::Up);
        e.apply(Key::Up);
        assert_eq!(e.text(), "stop ");
        e.apply(Key::Down);
        e.apply(Key::Down);
        assert_eq!(e.text(), "dra");
        assert_eq!(e.apply(Key::Interrupt), Step::Interrupted);
        assert_eq!(e.text(), "dra");
        e.apply(Key::EndOfInput);
        assert_eq!(
            e.text(),
            "dra",
            "Ctrl-D at the end of a line deletes nothing"
        );
        e.apply(Key::Home);
        e.apply(Key::EndOfInput);
        assert_eq!(e.text(), "ra", "Ctrl-D in a line deletes");
        e.clear();
        assert_eq!(e.apply(Key::EndOfInput), Step::EndOfInput);
    }

    #[test]
    fn tab_completes_then_lists() {
        let names = ["query-status", "query-cpus-fast", "quit", "stop"];
        let mut e = Editing::new(names.iter().map(|n| (*n).to_owned()).collect());
        type_text(&mut e, "qu");
        assert_eq!(e.apply(Key::Tab), Step::Redraw);
        assert_eq!(e.text(), "qu");
        assert_eq!(
            e.apply(Key::Tab),
            Step::Candidates(vec![
                "query-cpus-fast".into(),
                "query-status".into(),
                "quit".into()
            ])
        );
        type_text(&mut e, "e");
        e.apply(Key::Tab);
        assert_eq!(e.text(), "query-");
        type_text(&mut e, "s");
        e.apply(Key::Tab);
        assert_eq!(e.text(), "query-status ");
        // Arguments are not completed.
        assert_eq!(e.apply(Key::Tab), Step::Redraw);
        assert_eq!(e.text(), "query-status ");
    }

    /// A terminal as far as [`draw`] uses one: autowrap with a pending wrap at the right
    /// margin, CR, LF, cursor up and forward, erase below.
    struct Term {
        width: usize,
        rows: Vec<Vec<char>>,
        row: usize,
        column: usize,
        pending_wrap: bool,
    }

    impl Term {
        fn new(width: usize) -> Term {
            Term {
                width,
                rows: vec![Vec::new()],
                row: 0,
                column: 0,
                pending_wrap: false,
            }
        }

        fn feed(&mut self, text: &str) {
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\r' => {
                        self.column = 0;
                        self.pending_wrap = false;
                    }
                    '\n' => {
                        self.row += 1;
                        self.pending_wrap = false;
                    }
                    '\x1b' => {
                        assert_eq!(chars.next(), Some('['));
                        let mut n = String::new();
                        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                            n.push(*d);
                            chars.next();
                        }
                        let n: usize = n.parse().unwrap_or(1);
                        match chars.next() {
                            Some('A') => {
                                assert!(n <= self.row, "cursor moved above the screen");
                                self.row -= n;
                            }
                            Some('C') => self.column = (self.column + n).min(self.width - 1),
                            Some('J') => {
                                self.rows.truncate(self.row + 1);
                                if let Some(row) = self.rows.get_mut(self.row) {
                                    row.truncate(self.column);
                                }
                            }
                            other => panic!("unexpected sequence {other:?}"),
                        }
                        self.pending_wrap = false;
                    }
                    c => {
                        if self.pending_wrap {
                            self.row += 1;
                            self.column = 0;
                            self.pending_wrap = false;
                        }
                        while self.rows.len() <= self.row {
                            self.rows.push(Vec::new());
                        }
                        let row = &mut self.rows[self.row];
                        row.resize(row.len().max(self.column), ' ');
                        if self.column < row.len() {
                            row[self.column] = c;
                        } else {
                            row.push(c);
                        }
                        if self.column + 1 == self.width {
                            self.pending_wrap = true;
                        } else {
                            self.column += 1;
                        }
                    }
                }
            }
            while self.rows.len() <= self.row {
                self.rows.push(Vec::new());
            }
        }

        fn text(&self) -> String {
            self.rows.iter().flatten().collect()
        }
    }

    fn edit_key() -> impl Strategy<Value = Key> {
        prop_oneof![
            4 => proptest::char::range('a', 'e').prop_map(Key::Char),
            1 => Just(Key::Backspace),
            1 => Just(Key::Delete),
            1 => Just(Key::Left),
            1 => Just(Key::Right),
            1 => Just(Key::Home),
            1 => Just(Key::End),
            1 => Just(Key::KillWord),
            1 => Just(Key::KillToEnd),
            1 => Just(Key::KillToStart),
        ]
    }

    proptest! {
        /// Whatever is typed, at any width, each redraw leaves exactly prompt and line on
        /// screen and the cursor on the character it edits.
        #[test]
        fn redraws_show_the_line_and_place_the_cursor(
            width in 1usize..12,
            prompt in "[a-z>]{0,6} ?",
            edits in prop::collection::vec(edit_key(), 0..40),
        ) {
            let mut term = Term::new(width);
            let mut editing = Editing::new(Vec::new());
            let mut row = 0;
            for key in std::iter::once(Key::End).chain(edits) {
                editing.apply(key);
                let (line, cursor) = editing.line();
                let (bytes, next) = draw(&prompt, line, cursor, width, row);
                term.feed(&bytes);
                row = next;
                let shown = format!("{prompt}{}", editing.text());
                prop_assert_eq!(term.text(), shown.clone());
                let at = prompt.chars().count() + cursor;
                prop_assert_eq!((term.row, term.column), (at / width, at % width));
                prop_assert_eq!(row, term.row);
                for (i, r) in term.rows.iter().enumerate() {
                    prop_assert!(r.len() <= width);
                    if (i + 1) * width <= shown.chars().count() {
                        prop_assert_eq!(r.len(), width, "row {} not full", i);
                    }
                }
            }
        }

        /// Keys do not depend on how the terminal's bytes were split into reads, and no
        /// bytes make the decoder panic.
        #[test]
        fn keys_do_not_depend_on_read_boundaries(
            bytes in prop::collection::vec(
                prop_oneof![any::<u8>(), Just(0x1b), Just(b'['), Just(b'~'), Just(b'3')],
                0..64,
            ),
            split in 0usize..64,
        ) {
            let split = split.min(bytes.len());
            let mut decoder = KeyDecoder::default();
            let mut chunked = VecDeque::new();
            decoder.feed(&bytes[..split], &mut chunked);
            decoder.feed(&bytes[split..], &mut chunked);
            prop_assert_eq!(Vec::from(chunked), keys(&bytes));
        }

        /// Printable text is its characters, however many arrive in one read.
        #[test]
        fn text_is_its_characters(text in "[ -~é€]{0,40}") {
            let expected: Vec<Key> = text.chars().map(Key::Char).collect();
            prop_assert_eq!(keys(text.as_bytes()), expected);
        }
    }
}
