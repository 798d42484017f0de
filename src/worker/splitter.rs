//! The streaming blob splitter: turns the HTTP body of a content blob (a JSON array of audit
//! records) into the exact bytes of each record, chunk by chunk, without re-serialising and
//! without memory growing with the blob.
//!
//! [`Splitter`] is a push-style, sans-IO byte scanner: [`Splitter::feed`] takes one body chunk
//! and returns the events it completes; [`Splitter::finish`] says how the body ended.
//! [`SplitStream`] drives it over a body stream (reqwest's `bytes_stream()`), one chunk at a
//! time, so a worker that awaits the forwarder between records never makes it read ahead by
//! more than one chunk.
//!
//! # State machine
//!
//! ```text
//!  BeforeArray ──`[`──► ArrayOpened ──`]`──────────────────────────────► AfterArray
//!   (whitespace,            │ value start                                   ▲  (whitespace only;
//!    a BOM at byte 0)       ▼                                              `]`  else Unrecoverable)
//!                      InElement ──value closed──► AfterElement ─────────────┘
//!                         ▲                              │ `,`
//!                         └──── value start ◄── ExpectElement
//! ```
//!
//! `InElement` is either a container (`{…}`/`[…]`: a stack of open brackets, an in-string
//! flag and an escape flag), a top-level string (the same scanner with an empty stack), or a
//! bare value (a number or literal, ended by whitespace, `,` or `]`). Any byte a state does
//! not accept (a top-level non-array, `[{}{}]`, `[{"a":1}}]`, a `]` closing a `{`, `[{},]`,
//! trailing bytes after the closing `]`) moves it to `Failed` with one
//! [`SplitEvent::Unrecoverable`]; it then ignores the rest of the body.
//!
//! Two ways find an element's end, and they agree on every valid element (the property tests
//! compare both with serde_json's own split): when an element starts, serde_json first
//! parses it in place in the current chunk, which validates it and finds its end in one pass
//! (the common case: records of a few KiB in 16–64 KiB chunks); when that fails (the element
//! goes on in the next chunk, or it is invalid), the byte scanner above delimits it
//! (memchr inside strings, a lookup table outside) and the element is validated once whole.
//!
//! # Guarantees
//!
//! - **Exact bytes.** A Record's `bytes` are byte-identical to the body at
//!   `byte_range` (absolute offsets in the body); whitespace around elements is trimmed,
//!   nothing inside is touched.
//! - **Indices count every element**, good or bad, from 0, so they match the element's
//!   position in Microsoft's array (and the API emulator's `index`): skipping the first
//!   `acked_records` events that carry an index resumes a blob exactly where it stopped.
//! - **Validation.** A record is valid UTF-8, valid JSON (serde_json's grammar) and a JSON
//!   object. There is no nesting limit: serde_json skips a value it does not keep
//!   (`IgnoredAny`) with a heap stack, not recursion, so depths of 129, 500 or 100,000 are
//!   records like any other, the stack bounded by the element's length. An element that is
//!   delimited fine but fails any of these is a [`SplitEvent::BadRecord`]: the caller
//!   dead-letters it by reference and goes on. Its `reason` never quotes the record (DLP
//!   records hold the secrets they matched).
//! - **One limit.** The caller gives `max_element_bytes`, the largest record it can forward
//!   (the engine's message limit less the Log's other fields). A longer element is never
//!   buffered: once it passes the limit, the splitter drops what it held, keeps scanning its
//!   strings, escapes and brackets without storing them, hashes its bytes as they stream by,
//!   and at its end reports [`SplitEvent::Oversized`] with its true byte range, SHA-256 and
//!   size; the next element comes out as usual. It is not checked for UTF-8 or JSON (it
//!   cannot be held), only delimited. A chunk may cut it anywhere, inside an escape or a
//!   multi-byte character: the scanner's state carries over.
//! - **Unrecoverable** means the array's structure is lost at `offset`: nothing after it can
//!   be delimited with confidence, so no event follows, and the caller dead-letters the blob
//!   from that point. Records yielded before it stay valid.
//! - **End of body.** [`Splitter::finish`] gives [`SplitEvent::Complete`] only when the closing
//!   `]` was seen, and [`SplitEvent::Truncated`] when the body ended before it (an element cut
//!   in the middle is never yielded): the caller refetches and resumes from its acked count.
//!   An element over the limit that is still open when the body ends cleanly is
//!   Unrecoverable at its start, not Truncated: an unclosed string or bracket looks exactly
//!   like a huge element until the body ends, and a refetch would find it open again (a
//!   transfer that really was cut is a transport error, which the caller sees as such).
//! - **Memory.** Only the current element is buffered, and only when it spans chunks and is
//!   within the limit: an element inside one chunk is a zero-copy slice of that chunk (it
//!   keeps the chunk alive while the record is in flight). The buffer never grows past
//!   `max_element_bytes` ([`Splitter::buffered_bytes`]); an oversized element costs a
//!   SHA-256 state and its bracket stack, one byte per open bracket, capped at
//!   `max_element_bytes` too: brackets deeper than that (only in an element over the limit)
//!   are counted, not matched by kind, which still delimits the element.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use crate::forward::log::{
    RecordFields, read_record_fields, read_record_fields_in_text, read_whole_record_fields,
};
use futures_util::Stream;
use serde::de::IgnoredAny;
use sha2::{Digest, Sha256};

/// The UTF-8 byte order mark, accepted (and skipped) at the very start of the body.
const UTF8_BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// What the splitter found in the body. `Record`, `BadRecord` and `Oversized` each take the
/// next index.
#[derive(Clone, PartialEq, Eq)]
pub enum SplitEvent {
    /// A well-formed audit record: valid UTF-8 and JSON, and a JSON object.
    Record {
        /// Zero-based position of the element in the array.
        index: u64,
        /// The element's exact bytes, as Microsoft sent them.
        bytes: Bytes,
        /// Where those bytes are in the body, `[start, end)`.
        byte_range: Range<u64>,
        /// Its `Id` and `CreationTime`, when the pass that validated it read them (the
        /// fast path), so its Log is built without parsing it again.
        fields: Option<RecordFields>,
    },
    /// An element that is delimited fine but is not valid UTF-8, not valid JSON, or not an
    /// object: dead-letter it by reference and go on with the next one.
    BadRecord {
        /// Zero-based position of the element in the array.
        index: u64,
        /// Where the element is in the body, `[start, end)`.
        byte_range: Range<u64>,
        /// SHA-256 of the element's bytes, so an operator can match a refetched blob.
        sha256: [u8; 32],
        /// What is wrong with it, without quoting it.
        reason: String,
    },
    /// An element longer than the splitter's `max_element_bytes`: it was scanned, not kept,
    /// so dead-letter it by reference and go on with the next one.
    Oversized {
        /// Zero-based position of the element in the array.
        index: u64,
        /// Where the element is in the body, `[start, end)`.
        byte_range: Range<u64>,
        /// SHA-256 of the element's bytes, computed as they streamed by.
        sha256: [u8; 32],
        /// The element's length in bytes (the length of `byte_range`).
        size: u64,
    },
    /// The array's structure is lost at `offset`: no event follows, nothing after is trusted.
    Unrecoverable {
        /// Absolute body offset of the byte (or of the element) that broke the structure.
        offset: u64,
        /// What was expected there, without quoting record content.
        reason: String,
    },
    /// The body ended after the array's closing `]`.
    Complete {
        /// How many elements the array held (records and bad records).
        records: u64,
    },
    /// The body ended before the array's closing `]`: refetch and resume.
    Truncated {
        /// The body's length as received.
        offset: u64,
    },
}

impl SplitEvent {
    /// The array index of the element this event is about: a record, a bad record or an
    /// oversized element; `None` for the events about the whole body.
    pub fn index(&self) -> Option<u64> {
        match self {
            Self::Record { index, .. }
            | Self::BadRecord { index, .. }
            | Self::Oversized { index, .. } => Some(*index),
            Self::Unrecoverable { .. } | Self::Complete { .. } | Self::Truncated { .. } => None,
        }
    }
}

/// Debug never prints record bytes (they may hold secrets), only their length.
impl fmt::Debug for SplitEvent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Record {
                index,
                bytes,
                byte_range,
                ..
            } => formatter
                .debug_struct("Record")
                .field("index", index)
                .field("len", &bytes.len())
                .field("byte_range", byte_range)
                .finish(),
            Self::BadRecord {
                index,
                byte_range,
                sha256,
                reason,
            } => formatter
                .debug_struct("BadRecord")
                .field("index", index)
                .field("byte_range", byte_range)
                .field("sha256", &hex::encode(sha256))
                .field("reason", reason)
                .finish(),
            Self::Oversized {
                index,
                byte_range,
                sha256,
                size,
            } => formatter
                .debug_struct("Oversized")
                .field("index", index)
                .field("byte_range", byte_range)
                .field("sha256", &hex::encode(sha256))
                .field("size", size)
                .finish(),
            Self::Unrecoverable { offset, reason } => formatter
                .debug_struct("Unrecoverable")
                .field("offset", offset)
                .field("reason", reason)
                .finish(),
            Self::Complete { records } => formatter
                .debug_struct("Complete")
                .field("records", records)
                .finish(),
            Self::Truncated { offset } => formatter
                .debug_struct("Truncated")
                .field("offset", offset)
                .finish(),
        }
    }
}

/// Where the scanner is in the body (see the module doc's diagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before `[`: whitespace, or the UTF-8 BOM at byte 0 (`bom_bytes` of it seen so far).
    BeforeArray { bom_bytes: u8 },
    /// Just after `[`: an element or `]`.
    ArrayOpened,
    /// After `,`: an element.
    ExpectElement,
    /// Inside a container or a top-level string.
    InContainer,
    /// Inside a bare value (number or literal).
    InBareValue,
    /// After an element: `,` or `]`.
    AfterElement,
    /// After the closing `]`: whitespace only.
    AfterArray,
    /// An Unrecoverable was reported: the rest is ignored.
    Failed,
}

/// Push-style splitter of one blob body. Feed it every chunk in order, then call
/// [`finish`](Self::finish).
pub struct Splitter {
    max_element_bytes: usize,
    state: State,
    /// Absolute offset of the first byte of the next chunk.
    offset: u64,
    next_index: u64,
    /// Absolute offset of the current element's first byte.
    element_start: u64,
    /// The current element's bytes from earlier chunks (empty while it lies in one chunk,
    /// and once it is over the limit).
    element_buffer: BytesMut,
    /// The hash of an element over the limit so far, while it streams by.
    oversized: Option<Sha256>,
    /// Closing brackets expected, innermost last, at most `max_element_bytes` of them.
    closers: Vec<u8>,
    /// Brackets open beyond the `closers` stack's cap: counted, not matched by kind (only
    /// an oversized element nests that deep, and it is delimited, not validated).
    unmatched_depth: u64,
    in_string: bool,
    escaped: bool,
}

impl fmt::Debug for Splitter {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Splitter")
            .field("state", &self.state)
            .field("offset", &self.offset)
            .field("next_index", &self.next_index)
            .field("max_element_bytes", &self.max_element_bytes)
            .field("in_oversized_element", &self.oversized.is_some())
            .finish_non_exhaustive()
    }
}

/// How scanning an element within one chunk ended.
enum ElementScan {
    /// The element ends just before this chunk position.
    Ended(usize),
    /// The chunk ended inside the element.
    NeedMore,
    /// The structure broke at this chunk position, for this reason.
    Broken(usize, String),
}

/// The length of a Record's or BadRecord's byte range.
fn byte_range_length(event: &SplitEvent) -> usize {
    match event {
        SplitEvent::Record { byte_range, .. } | SplitEvent::BadRecord { byte_range, .. } => {
            (byte_range.end - byte_range.start) as usize
        }
        _ => 0,
    }
}

/// JSON's insignificant whitespace.
fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Bytes that matter inside a container outside strings.
const STRUCTURAL: [bool; 256] = {
    let mut table = [false; 256];
    table[b'"' as usize] = true;
    table[b'{' as usize] = true;
    table[b'}' as usize] = true;
    table[b'[' as usize] = true;
    table[b']' as usize] = true;
    table
};

/// The next `"` or `\\` in a string: a short byte loop first (most audit-record strings
/// are short, where memchr's setup costs more than it saves), then memchr for long ones.
#[inline]
fn find_quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    const SHORT: usize = 32;
    let head = &bytes[..bytes.len().min(SHORT)];
    if let Some(found) = head.iter().position(|&byte| byte == b'"' || byte == b'\\') {
        return Some(found);
    }
    if bytes.len() <= SHORT {
        return None;
    }
    memchr::memchr2(b'"', b'\\', &bytes[SHORT..]).map(|found| found + SHORT)
}

/// Names a byte found where it does not belong, quoting only JSON punctuation (never
/// record content).
fn describe_byte(byte: u8) -> String {
    match byte {
        b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"' => format!("`{}`", byte as char),
        _ => "a byte that is not JSON punctuation".to_owned(),
    }
}

impl Splitter {
    /// A splitter whose records may be at most `max_element_bytes` long (the largest record
    /// the caller can forward); a longer element is scanned without being kept and reported
    /// as [`SplitEvent::Oversized`].
    pub fn new(max_element_bytes: usize) -> Self {
        Self {
            max_element_bytes,
            state: State::BeforeArray { bom_bytes: 0 },
            offset: 0,
            next_index: 0,
            element_start: 0,
            element_buffer: BytesMut::new(),
            oversized: None,
            closers: Vec::new(),
            unmatched_depth: 0,
            in_string: false,
            escaped: false,
        }
    }

    /// Bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.offset
    }

    /// The memory held for the element in progress: the capacity of its buffer, never more
    /// than `max_element_bytes`, and 0 while an oversized element streams by.
    pub fn buffered_bytes(&self) -> usize {
        self.element_buffer.capacity()
    }

    /// Whether an Unrecoverable was reported (later chunks are ignored).
    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Scans the next chunk of the body and returns the events it completes, in order.
    /// Records that lie inside `chunk` are zero-copy slices of it.
    pub fn feed(&mut self, chunk: Bytes) -> Vec<SplitEvent> {
        let mut events = Vec::new();
        let mut checked = CheckedText::new(&chunk);
        let mut cursor = 0;
        // Where the current element's bytes start in this chunk (0 when it began earlier).
        let mut piece_start = 0;
        while cursor < chunk.len() {
            match self.state {
                State::Failed => break,
                State::InContainer | State::InBareValue => {
                    let scan = if self.state == State::InContainer {
                        self.scan_container(&chunk, cursor)
                    } else {
                        self.scan_bare_value(&chunk, cursor)
                    };
                    match scan {
                        ElementScan::NeedMore => cursor = chunk.len(),
                        ElementScan::Ended(end) => {
                            events.push(self.end_element(&chunk, piece_start, end));
                            cursor = end;
                        }
                        ElementScan::Broken(at, reason) => {
                            events.push(self.fail(self.absolute(at), reason));
                        }
                    }
                }
                _ => {
                    let byte = chunk[cursor];
                    if let Some(event) = self.step_between_elements(byte, cursor) {
                        events.push(event);
                    }
                    if matches!(self.state, State::InContainer | State::InBareValue) {
                        piece_start = cursor;
                        if let Some(event) = self.split_whole_element(&chunk, cursor, &mut checked)
                        {
                            cursor += byte_range_length(&event);
                            events.push(event);
                            continue;
                        }
                    }
                    cursor += 1;
                }
            }
        }
        if matches!(self.state, State::InContainer | State::InBareValue) {
            self.keep_tail(&chunk[piece_start..]);
        }
        self.offset += chunk.len() as u64;
        events
    }

    /// Says how the body ended: `Complete` after the closing `]`, `Truncated` before it,
    /// `Unrecoverable` inside an element already over the limit (its structure is lost: it
    /// never closes), `None` when an Unrecoverable was already reported.
    pub fn finish(self) -> Option<SplitEvent> {
        match self.state {
            State::Failed => None,
            State::InContainer | State::InBareValue if self.oversized.is_some() => {
                Some(SplitEvent::Unrecoverable {
                    offset: self.element_start,
                    reason: format!(
                        "element {} starting at byte {} is still open when the body ends, {} \
                         bytes later, over the limit of {} bytes per record (an unclosed string \
                         or bracket)",
                        self.next_index,
                        self.element_start,
                        self.offset - self.element_start,
                        self.max_element_bytes
                    ),
                })
            }
            State::AfterArray => Some(SplitEvent::Complete {
                records: self.next_index,
            }),
            _ => Some(SplitEvent::Truncated {
                offset: self.offset,
            }),
        }
    }

    fn absolute(&self, chunk_position: usize) -> u64 {
        self.offset + chunk_position as u64
    }

    fn fail(&mut self, offset: u64, reason: String) -> SplitEvent {
        self.state = State::Failed;
        self.element_buffer = BytesMut::new();
        self.oversized = None;
        self.closers = Vec::new();
        self.unmatched_depth = 0;
        SplitEvent::Unrecoverable { offset, reason }
    }

    /// One byte outside any element: moves the state, maybe starts an element (which the
    /// caller then scans from the next byte).
    fn step_between_elements(&mut self, byte: u8, cursor: usize) -> Option<SplitEvent> {
        let at = self.absolute(cursor);
        match self.state {
            State::BeforeArray { bom_bytes } => {
                let bom_index = usize::from(bom_bytes);
                if at == bom_index as u64
                    && bom_index < UTF8_BOM.len()
                    && byte == UTF8_BOM[bom_index]
                {
                    self.state = State::BeforeArray {
                        bom_bytes: bom_bytes + 1,
                    };
                } else if bom_bytes > 0 && bom_index < UTF8_BOM.len() {
                    return Some(self.fail(
                        at,
                        "the body starts with an incomplete UTF-8 byte order mark".to_owned(),
                    ));
                } else if byte == b'[' {
                    self.state = State::ArrayOpened;
                } else if !is_whitespace(byte) {
                    let reason = format!(
                        "the body is not a JSON array: expected `[`, found {}",
                        describe_byte(byte)
                    );
                    return Some(self.fail(at, reason));
                }
            }
            State::ArrayOpened | State::ExpectElement => {
                if is_whitespace(byte) {
                } else if byte == b']' && self.state == State::ArrayOpened {
                    self.state = State::AfterArray;
                } else if matches!(byte, b']' | b'}' | b',' | b':') {
                    let reason = format!(
                        "expected element {} of the array, found {}",
                        self.next_index,
                        describe_byte(byte)
                    );
                    return Some(self.fail(at, reason));
                } else {
                    self.start_element(byte, at);
                }
            }
            State::AfterElement => match byte {
                b',' => self.state = State::ExpectElement,
                b']' => self.state = State::AfterArray,
                _ if is_whitespace(byte) => {}
                _ => {
                    let reason = format!(
                        "expected `,` or `]` after element {}, found {}",
                        self.next_index.saturating_sub(1),
                        describe_byte(byte)
                    );
                    return Some(self.fail(at, reason));
                }
            },
            State::AfterArray => {
                if !is_whitespace(byte) {
                    let reason = format!(
                        "trailing data after the array's closing `]`: found {}",
                        describe_byte(byte)
                    );
                    return Some(self.fail(at, reason));
                }
            }
            State::InContainer | State::InBareValue | State::Failed => {}
        }
        None
    }

    fn start_element(&mut self, first_byte: u8, at: u64) {
        self.element_start = at;
        self.element_buffer.clear();
        self.closers.clear();
        self.unmatched_depth = 0;
        self.escaped = false;
        self.in_string = false;
        self.state = State::InContainer;
        match first_byte {
            b'{' => self.closers.push(b'}'),
            b'[' => self.closers.push(b']'),
            b'"' => self.in_string = true,
            _ => self.state = State::InBareValue,
        }
    }

    /// Scans a container (or top-level string) from `cursor`: strings jump from quote or
    /// backslash to the next with memchr; outside strings, a table finds the brackets.
    fn scan_container(&mut self, chunk: &[u8], mut cursor: usize) -> ElementScan {
        loop {
            if self.in_string {
                if self.escaped {
                    if cursor >= chunk.len() {
                        return ElementScan::NeedMore;
                    }
                    self.escaped = false;
                    cursor += 1;
                }
                let Some(found) = find_quote_or_backslash(&chunk[cursor.min(chunk.len())..]) else {
                    return ElementScan::NeedMore;
                };
                let position = cursor + found;
                cursor = position + 1;
                if chunk[position] == b'\\' {
                    self.escaped = true;
                    continue;
                }
                self.in_string = false;
                if self.closers.is_empty() {
                    return ElementScan::Ended(cursor);
                }
                continue;
            }
            while cursor < chunk.len() && !STRUCTURAL[usize::from(chunk[cursor])] {
                cursor += 1;
            }
            let Some(&byte) = chunk.get(cursor) else {
                return ElementScan::NeedMore;
            };
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' if self.closers.len() >= self.max_element_bytes => {
                    self.unmatched_depth += 1;
                }
                b'{' => self.closers.push(b'}'),
                b'[' => self.closers.push(b']'),
                _ if self.unmatched_depth > 0 => self.unmatched_depth -= 1,
                _ => {
                    let expected = self.closers.pop();
                    if expected != Some(byte) {
                        return ElementScan::Broken(cursor, self.mismatch_reason(byte, expected));
                    }
                    if self.closers.is_empty() {
                        return ElementScan::Ended(cursor + 1);
                    }
                }
            }
            cursor += 1;
        }
    }

    fn mismatch_reason(&self, found: u8, expected: Option<u8>) -> String {
        let expected = match expected {
            Some(closer) => format!("`{}`", closer as char),
            None => "nothing".to_owned(),
        };
        format!(
            "element {} starting at byte {}: found `{}` where {expected} closes the open bracket",
            self.next_index, self.element_start, found as char
        )
    }

    /// Scans a bare value (number or literal): it ends at whitespace, `,` or `]`.
    fn scan_bare_value(&mut self, chunk: &[u8], mut cursor: usize) -> ElementScan {
        while let Some(&byte) = chunk.get(cursor) {
            match byte {
                b',' | b']' => return ElementScan::Ended(cursor),
                _ if is_whitespace(byte) => return ElementScan::Ended(cursor),
                b'{' | b'[' | b'}' | b'"' | b':' => {
                    let reason = format!(
                        "element {} starting at byte {}: found {} inside a bare value",
                        self.next_index,
                        self.element_start,
                        describe_byte(byte)
                    );
                    return ElementScan::Broken(cursor, reason);
                }
                _ => cursor += 1,
            }
        }
        ElementScan::NeedMore
    }

    /// The chunk ended inside the element: keeps its tail while the element is within the
    /// limit; past it, hashes the tail instead and drops what was kept.
    fn keep_tail(&mut self, tail: &[u8]) {
        if self.oversized.is_none()
            && self.element_buffer.len() + tail.len() > self.max_element_bytes
        {
            self.start_oversized();
        }
        match self.oversized.as_mut() {
            Some(hasher) => hasher.update(tail),
            None => self.buffer_piece(tail),
        }
    }

    /// The element is over the limit: from here on it is hashed, not kept.
    fn start_oversized(&mut self) {
        let mut hasher = Sha256::new();
        hasher.update(&self.element_buffer);
        self.element_buffer = BytesMut::new();
        self.oversized = Some(hasher);
    }

    /// Appends `piece` to the element buffer (the caller checked the element stays within
    /// the limit). It grows by doubling, as a `Vec` does, but never past
    /// `max_element_bytes`, so an element just under the limit does not hold twice that.
    fn buffer_piece(&mut self, piece: &[u8]) {
        let needed = self.element_buffer.len() + piece.len();
        if needed > self.element_buffer.capacity() {
            let capacity = (self.element_buffer.capacity() * 2)
                .min(self.max_element_bytes)
                .max(needed);
            let mut grown = BytesMut::with_capacity(capacity);
            grown.extend_from_slice(&self.element_buffer);
            self.element_buffer = grown;
        }
        self.element_buffer.extend_from_slice(piece);
    }

    /// The element ends before chunk position `end`: takes its bytes and classifies them,
    /// or reports it as oversized.
    fn end_element(&mut self, chunk: &Bytes, piece_start: usize, end: usize) -> SplitEvent {
        let piece = &chunk[piece_start..end];
        if self.oversized.is_none()
            && self.element_buffer.len() + piece.len() > self.max_element_bytes
        {
            self.start_oversized();
        }
        if let Some(mut hasher) = self.oversized.take() {
            hasher.update(piece);
            return self.take_oversized(hasher, self.absolute(end));
        }
        let bytes = if self.element_buffer.is_empty() {
            chunk.slice(piece_start..end)
        } else {
            self.buffer_piece(piece);
            self.element_buffer.split().freeze()
        };
        self.take_element(bytes, Validation::Full, None)
    }

    /// Gives the oversized element ending at absolute offset `end` the next index.
    fn take_oversized(&mut self, hasher: Sha256, end: u64) -> SplitEvent {
        let index = self.next_index;
        self.next_index += 1;
        self.state = State::AfterElement;
        SplitEvent::Oversized {
            index,
            byte_range: self.element_start..end,
            sha256: hasher.finalize().into(),
            size: end - self.element_start,
        }
    }

    /// Fast path for an element that starts at chunk position `start`: serde_json parses it
    /// in place, which both validates it and finds its end in one pass. `None` when it does
    /// not parse there (it goes on in the next chunk, or it is invalid, or a number reaches
    /// the chunk's end): the byte scanner then delimits it.
    ///
    /// The pass reads the record's `Id` and `CreationTime` as it goes (skipping every other
    /// field, as `IgnoredAny` would); an element it refuses for naming either twice is
    /// valid JSON all the same, and the byte scanner takes it.
    ///
    /// It parses the chunk's text checked for UTF-8 once ([`CheckedText`]) where the element
    /// lies in it, and the bytes (UTF-8 checked after) where it does not.
    fn split_whole_element(
        &mut self,
        chunk: &Bytes,
        start: usize,
        checked: &mut CheckedText<'_>,
    ) -> Option<SplitEvent> {
        let text = checked.from(start);
        let (fields, length, validation) = match read_record_fields_in_text(text) {
            Some((fields, length)) => (fields, length, Validation::Object),
            // The text ran to the chunk's end: the bytes hold nothing more to parse.
            None if text.len() == chunk.len() - start => return None,
            None => {
                let (fields, length) = read_record_fields(&chunk[start..])?;
                (fields, length, Validation::Utf8AndObject)
            }
        };
        let end = start + length;
        // A bare value must end where the scanner would end it (serde_json also stops at
        // `"`, `{`, `:`…), and one that reaches the chunk's end may go on in the next.
        let bare_value_ends_like_the_scanner = match chunk.get(end) {
            Some(&next) => is_whitespace(next) || next == b',' || next == b']',
            None => false,
        };
        if self.state == State::InBareValue && !bare_value_ends_like_the_scanner {
            return None;
        }
        if end - start > self.max_element_bytes {
            return None;
        }
        let bytes = chunk.slice(start..end);
        Some(self.take_element(bytes, validation, Some(fields)))
    }

    /// Gives the element the next index and classifies it as a record or a bad record.
    fn take_element(
        &mut self,
        bytes: Bytes,
        validation: Validation,
        fields: Option<RecordFields>,
    ) -> SplitEvent {
        let index = self.next_index;
        self.next_index += 1;
        self.state = State::AfterElement;
        let byte_range = self.element_start..self.element_start + bytes.len() as u64;
        // The fields are read whichever path delimited the element, so events do not
        // depend on where the body's chunks end.
        let (verdict, fields) = match validation {
            Validation::Full => match validate_utf8(&bytes)
                .ok()
                // UTF-8 first: serde_json does not check it inside strings.
                .and_then(|()| read_whole_record_fields(&bytes))
            {
                Some(fields) => (require_object(&bytes), Some(fields)),
                None => (validate_record(&bytes), None),
            },
            Validation::Utf8AndObject => (
                validate_utf8(&bytes).and_then(|()| require_object(&bytes)),
                fields,
            ),
            Validation::Object => (require_object(&bytes), fields),
        };
        match verdict {
            Ok(()) => SplitEvent::Record {
                index,
                bytes,
                byte_range,
                // A record passed `validate_utf8` on either path.
                fields: fields.map(RecordFields::of_utf8_record),
            },
            Err(reason) => SplitEvent::BadRecord {
                index,
                byte_range,
                sha256: Sha256::digest(&bytes).into(),
                reason,
            },
        }
    }
}

/// How much of [`validate_record`] an element still needs.
#[derive(Clone, Copy)]
enum Validation {
    /// All of it.
    Full,
    /// serde_json already parsed it (which does not check UTF-8 inside strings).
    Utf8AndObject,
    /// serde_json already parsed it as text checked to be UTF-8.
    Object,
}

/// The part of one chunk known to be UTF-8, from an element's start to the chunk's end or
/// its first invalid byte: checked once (SIMD) for every element that starts in it, instead
/// of once per record and again for each key serde_json reads.
struct CheckedText<'c> {
    chunk: &'c [u8],
    start: usize,
    text: &'c str,
}

impl<'c> CheckedText<'c> {
    fn new(chunk: &'c [u8]) -> Self {
        Self {
            chunk,
            start: 0,
            text: "",
        }
    }

    /// The checked text from chunk position `start` on (empty when the byte there is not
    /// UTF-8); checks the chunk from `start` when the text checked so far does not hold it.
    fn from(&mut self, start: usize) -> &'c str {
        let held = start
            .checked_sub(self.start)
            .and_then(|at| self.text.get(at..))
            .filter(|rest| !rest.is_empty());
        if let Some(rest) = held {
            return rest;
        }
        self.start = start;
        self.text = utf8_prefix(&self.chunk[start..]);
        self.text
    }
}

/// The longest prefix of `bytes` that is UTF-8.
fn utf8_prefix(bytes: &[u8]) -> &str {
    match simdutf8::compat::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => simdutf8::basic::from_utf8(&bytes[..error.valid_up_to()]).unwrap_or_default(),
    }
}

/// Checks that one delimited element is an audit record: UTF-8, JSON, an object. The
/// reason names a position and serde_json's fixed description, never the content.
pub fn validate_record(bytes: &[u8]) -> Result<(), String> {
    validate_utf8(bytes)?;
    // serde_json's byte-slice parser skips string contents without checking their UTF-8:
    // that is why `validate_utf8` comes first.
    if let Err(error) = serde_json::from_slice::<IgnoredAny>(bytes) {
        return Err(describe_json_error(bytes, &error));
    }
    require_object(bytes)
}

fn validate_utf8(bytes: &[u8]) -> Result<(), String> {
    match simdutf8::compat::from_utf8(bytes) {
        Ok(_) => Ok(()),
        Err(error) => Err(format!(
            "invalid UTF-8 at byte {} of the record",
            error.valid_up_to()
        )),
    }
}

fn require_object(bytes: &[u8]) -> Result<(), String> {
    match bytes.first() {
        Some(b'{') => Ok(()),
        Some(b'[') => Err("not a JSON object but an array".to_owned()),
        Some(b'"') => Err("not a JSON object but a string".to_owned()),
        Some(b't' | b'f') => Err("not a JSON object but a boolean".to_owned()),
        Some(b'n') => Err("not a JSON object but null".to_owned()),
        _ => Err("not a JSON object but a number".to_owned()),
    }
}

/// serde_json's syntax errors read "{description} at line L column C", the description
/// being one of its fixed messages (none quotes the input); this turns the position into a
/// byte offset in the record.
fn describe_json_error(text: &[u8], error: &serde_json::Error) -> String {
    let message = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let description = message.strip_suffix(&suffix).unwrap_or(&message);
    let line_start = if error.line() <= 1 {
        0
    } else {
        memchr::memchr_iter(b'\n', text)
            .nth(error.line() - 2)
            .map_or(0, |newline| newline + 1)
    };
    // The column is 1-based; the offset said is 0-based, like byte ranges.
    format!(
        "invalid JSON at byte {} of the record: {description}",
        (line_start + error.column()).saturating_sub(1)
    )
}

/// Drives a [`Splitter`] over a body stream, one chunk at a time: the next chunk is read
/// only when every event of the previous one was taken, so a slow consumer holds the body
/// back (backpressure) instead of buffering it. Ends after `Complete`/`Truncated`, after an
/// `Unrecoverable` (the rest of the body is not read), or after the first transport error,
/// which is yielded as `Err` for the caller to retry.
///
/// ```
/// # use bytes::Bytes;
/// # use o365_connector::worker::splitter::{SplitEvent, SplitStream, Splitter};
/// # tokio_test_block_on(async {
/// let chunks = vec![
///     Ok::<_, std::io::Error>(Bytes::from_static(br#"[{"Id":"a"},{"Id""#)),
///     Ok(Bytes::from_static(br#":"b"}]"#)),
/// ];
/// let max_record_bytes = 4 * 1024 * 1024 - 64 * 1024;
/// let mut events =
///     SplitStream::new(futures_util::stream::iter(chunks), Splitter::new(max_record_bytes));
/// let acked_records = 1; // from the queue: skip what the engine already has
/// while let Some(event) = events.next_event().await {
///     match event? {
///         SplitEvent::Record { index, .. } if index < acked_records => {}
///         SplitEvent::Record { bytes, .. } => assert_eq!(&bytes[..], br#"{"Id":"b"}"#),
///         SplitEvent::BadRecord { .. } => { /* dead-letter by reference, go on */ }
///         SplitEvent::Oversized { .. } => { /* dead-letter by reference, go on */ }
///         SplitEvent::Unrecoverable { .. } => { /* dead-letter from there, stop */ }
///         SplitEvent::Complete { records } => assert_eq!(records, 2),
///         SplitEvent::Truncated { .. } => { /* refetch, resume from the acked count */ }
///     }
/// }
/// # Ok::<(), std::io::Error>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(future: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
/// # }
/// ```
pub struct SplitStream<S> {
    body: Pin<Box<S>>,
    splitter: Option<Splitter>,
    pending: std::vec::IntoIter<SplitEvent>,
}

impl<S> fmt::Debug for SplitStream<S> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SplitStream")
            .field("splitter", &self.splitter)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<S, E> SplitStream<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    /// Splits `body` (e.g. `response.bytes_stream()`) with `splitter`.
    pub fn new(body: S, splitter: Splitter) -> Self {
        Self {
            body: Box::pin(body),
            splitter: Some(splitter),
            pending: Vec::new().into_iter(),
        }
    }

    /// The next event, or `None` once the stream has ended.
    pub async fn next_event(&mut self) -> Option<Result<SplitEvent, E>> {
        std::future::poll_fn(|context| Pin::new(&mut *self).poll_next(context)).await
    }
}

impl<S, E> Stream for SplitStream<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<SplitEvent, E>;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.pending.next() {
                return Poll::Ready(Some(Ok(event)));
            }
            let Some(splitter) = this.splitter.as_mut() else {
                return Poll::Ready(None);
            };
            match this.body.as_mut().poll_next(context) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    this.pending = splitter.feed(chunk).into_iter();
                    if splitter.is_failed() {
                        this.splitter = None;
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.splitter = None;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => {
                    let ending = this.splitter.take().and_then(Splitter::finish);
                    this.pending = ending.into_iter().collect::<Vec<_>>().into_iter();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::MAX_RECORD_BYTES;

    #[test]
    fn serde_json_alone_accepts_invalid_utf8_in_strings_so_it_is_checked_first() {
        let record = b"{\"a\":\"\xff\"}";
        assert!(serde_json::from_slice::<IgnoredAny>(record).is_ok());
        assert_eq!(
            validate_record(record),
            Err("invalid UTF-8 at byte 6 of the record".to_owned())
        );
    }

    #[test]
    fn json_error_offsets_count_bytes_across_lines() {
        let record = b"{\n\"a\":\n1 2}";
        assert_eq!(
            validate_record(record),
            Err("invalid JSON at byte 9 of the record: expected `,` or `}`".to_owned())
        );
        assert_eq!(
            validate_record(br#"{"a" 1}"#),
            Err("invalid JSON at byte 5 of the record: expected `:`".to_owned())
        );
    }

    #[test]
    fn memory_holds_one_element_however_long_the_blob() {
        let record = br#"{"Id":"0123456789","Operation":"FileAccessed","Nested":{"a":[1,2,3]}}"#;
        let mut body = b"[".to_vec();
        for _ in 0..20_000 {
            body.extend_from_slice(record);
            body.extend_from_slice(b",\n");
        }
        body.extend_from_slice(record);
        body.push(b']');
        let mut splitter = Splitter::new(MAX_RECORD_BYTES);
        let mut records = 0;
        let mut largest_buffer = 0;
        for chunk in body.chunks(97) {
            records += splitter.feed(Bytes::copy_from_slice(chunk)).len();
            largest_buffer = largest_buffer.max(splitter.buffered_bytes());
        }
        assert_eq!(records, 20_001);
        assert!(
            largest_buffer <= 4 * record.len(),
            "buffer grew to {largest_buffer}"
        );
        assert_eq!(
            splitter.finish(),
            Some(SplitEvent::Complete { records: 20_001 })
        );
    }

    #[test]
    fn a_number_cut_by_a_chunk_boundary_is_not_ended_early() {
        let mut splitter = Splitter::new(MAX_RECORD_BYTES);
        assert!(splitter.feed(Bytes::from_static(b"[12")).is_empty());
        let events = splitter.feed(Bytes::from_static(b"3]"));
        assert!(
            matches!(&events[..], [SplitEvent::BadRecord { index: 0, byte_range, .. }] if *byte_range == (1..4)),
            "{events:?}"
        );
        assert_eq!(splitter.finish(), Some(SplitEvent::Complete { records: 1 }));
    }

    #[test]
    fn a_record_cut_by_a_chunk_boundary_is_buffered_once_and_comes_out_whole() {
        let mut splitter = Splitter::new(MAX_RECORD_BYTES);
        assert!(splitter.feed(Bytes::from_static(br#"[{"a":"x"#)).is_empty());
        assert!(splitter.feed(Bytes::from_static(br#"y\""#)).is_empty());
        let events = splitter.feed(Bytes::from_static(br#""}]"#));
        match &events[..] {
            [
                SplitEvent::Record {
                    bytes, byte_range, ..
                },
            ] => {
                assert_eq!(&bytes[..], br#"{"a":"xy\""}"#);
                assert_eq!(*byte_range, 1..13);
            }
            other => panic!("{other:?}"),
        }
        assert!(splitter.element_buffer.is_empty());
    }
}
