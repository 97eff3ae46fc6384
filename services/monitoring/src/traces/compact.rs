//! How the trace store keeps spans small: strings that repeat across spans (service and
//! span names, attribute keys, event names) are interned once and named by a 4-byte
//! symbol, reference-counted so that a name disappears with the last span using it; the
//! rest of a span that is not needed to index or summarise it (status message, attributes,
//! events) is packed into one byte string with LEB128 lengths.
//!
//! It is not a general serialisation format: the bytes never leave the process.

use super::SpanEventRecord;
use std::collections::HashMap;
use std::sync::Arc;

/// An interned string.
pub type Sym = u32;

/// Reference-counted interned strings.
#[derive(Default)]
pub struct Interner {
    ids: HashMap<Arc<str>, Sym>,
    /// By symbol: the string and how many uses hold it (`None` once freed).
    entries: Vec<Option<(Arc<str>, u32)>>,
    free: Vec<Sym>,
    /// Bytes held by the live strings, with a per-string estimate of the map's overhead.
    bytes: usize,
}

/// Heap and table overhead of one interned string beyond its bytes (the map's slot, the
/// entry, the `Arc` header), an estimate for the store's accounting.
const STRING_OVERHEAD: usize = 64;

impl Interner {
    /// The symbol of `text`, taking one more use of it.
    pub fn intern(&mut self, text: &str) -> Sym {
        if let Some(&sym) = self.ids.get(text) {
            if let Some((_, uses)) = &mut self.entries[sym as usize] {
                *uses += 1;
            }
            return sym;
        }
        let text: Arc<str> = Arc::from(text);
        self.bytes += text.len() + STRING_OVERHEAD;
        let sym = match self.free.pop() {
            Some(sym) => {
                self.entries[sym as usize] = Some((text.clone(), 1));
                sym
            }
            None => {
                self.entries.push(Some((text.clone(), 1)));
                (self.entries.len() - 1) as Sym
            }
        };
        self.ids.insert(text, sym);
        sym
    }

    /// Gives back one use of `sym`; the string is forgotten with its last use.
    pub fn release(&mut self, sym: Sym) {
        let Some(slot) = self.entries.get_mut(sym as usize) else { return };
        let Some((text, uses)) = slot else { return };
        *uses -= 1;
        if *uses == 0 {
            self.bytes -= text.len() + STRING_OVERHEAD;
            self.ids.remove(text);
            *slot = None;
            self.free.push(sym);
        }
    }

    /// The symbol of `text` if some span uses it.
    pub fn lookup(&self, text: &str) -> Option<Sym> {
        self.ids.get(text).copied()
    }

    pub fn resolve(&self, sym: Sym) -> &str {
        self.entries.get(sym as usize).and_then(Option::as_ref).map_or("", |(text, _)| text)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.ids.len()
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// Reads what [`put_varint`] and [`put_text`] wrote. The bytes are this module's own, so
/// a malformed input (which would be a bug here) reads as zeros and empty strings rather
/// than panicking.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> u64 {
        let mut value = 0u64;
        let mut shift = 0;
        while let Some((&byte, rest)) = self.bytes.split_first() {
            self.bytes = rest;
            if shift < 64 {
                value |= u64::from(byte & 0x7f) << shift;
            }
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }

    fn text(&mut self) -> &'a str {
        let len = (self.varint() as usize).min(self.bytes.len());
        let (text, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        std::str::from_utf8(text).unwrap_or("")
    }

    fn sym(&mut self) -> Sym {
        self.varint() as Sym
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// What a span carries besides its ids, names, kind, status and times.
pub struct Extra<'a> {
    pub status_message: Option<&'a str>,
    pub attributes: &'a [(String, String)],
    pub events: &'a [SpanEventRecord],
}

/// Packs `extra` (interning keys and event names); nothing at all when it is all empty.
/// Event times are kept as nanoseconds from the span's start.
pub fn encode(extra: &Extra<'_>, start: i64, strings: &mut Interner) -> Box<[u8]> {
    if extra.status_message.is_none() && extra.attributes.is_empty() && extra.events.is_empty() {
        return Box::default();
    }
    let mut out = Vec::new();
    match extra.status_message {
        Some(message) => {
            put_varint(&mut out, message.len() as u64 + 1);
            out.extend_from_slice(message.as_bytes());
        }
        None => put_varint(&mut out, 0),
    }
    let attributes = |out: &mut Vec<u8>, attributes: &[(String, String)], strings: &mut Interner| {
        put_varint(out, attributes.len() as u64);
        for (key, value) in attributes {
            put_varint(out, u64::from(strings.intern(key)));
            put_text(out, value);
        }
    };
    attributes(&mut out, extra.attributes, strings);
    put_varint(&mut out, extra.events.len() as u64);
    for event in extra.events {
        put_varint(&mut out, u64::from(strings.intern(&event.name)));
        put_varint(&mut out, zigzag(super::unix_nanos(event.time).saturating_sub(start)));
        attributes(&mut out, &event.attributes, strings);
    }
    out.into_boxed_slice()
}

/// Every symbol `bytes` holds, each once per use (to release them).
pub fn symbols(bytes: &[u8], mut each: impl FnMut(Sym)) {
    if bytes.is_empty() {
        return;
    }
    let mut reader = Reader { bytes };
    let message = reader.varint() as usize;
    reader.bytes = &reader.bytes[message.saturating_sub(1).min(reader.bytes.len())..];
    fn attributes(reader: &mut Reader<'_>, each: &mut impl FnMut(Sym)) {
        for _ in 0..reader.varint() {
            each(reader.sym());
            reader.text();
        }
    }
    attributes(&mut reader, &mut each);
    for _ in 0..reader.varint() {
        each(reader.sym());
        reader.varint();
        attributes(&mut reader, &mut each);
    }
}

/// The status message, attributes and events `bytes` holds.
pub type Decoded = (Option<String>, Vec<(String, String)>, Vec<SpanEventRecord>);

pub fn decode(bytes: &[u8], start: i64, strings: &Interner) -> Decoded {
    if bytes.is_empty() {
        return (None, Vec::new(), Vec::new());
    }
    let mut reader = Reader { bytes };
    let status_message = match reader.varint() as usize {
        0 => None,
        len => {
            let len = (len - 1).min(reader.bytes.len());
            let (text, rest) = reader.bytes.split_at(len);
            reader.bytes = rest;
            Some(String::from_utf8_lossy(text).into_owned())
        }
    };
    let attributes = |reader: &mut Reader<'_>| -> Vec<(String, String)> {
        let count = reader.varint() as usize;
        let mut out = Vec::with_capacity(count.min(128));
        for _ in 0..count {
            let key = strings.resolve(reader.sym()).to_string();
            out.push((key, reader.text().to_string()));
        }
        out
    };
    let attrs = attributes(&mut reader);
    let count = reader.varint() as usize;
    let mut events = Vec::with_capacity(count.min(128));
    for _ in 0..count {
        let name = strings.resolve(reader.sym()).to_string();
        let offset = unzigzag(reader.varint());
        let attributes = attributes(&mut reader);
        events.push(SpanEventRecord { name, time: super::system_time(start.saturating_add(offset)), attributes });
    }
    (status_message, attrs, events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_round_trip_at_the_edges() {
        for value in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(Reader { bytes: &out }.varint(), value);
        }
        for value in [0i64, 1, -1, i64::MAX, i64::MIN, -1_000_000] {
            assert_eq!(unzigzag(zigzag(value)), value);
        }
    }

    #[test]
    fn extras_round_trip_and_release_every_symbol_they_took() {
        let mut strings = Interner::default();
        let start = 1_700_000_000_000_000_000i64;
        let attributes = vec![("http.route".to_string(), "/v1/search".to_string()), ("empty".into(), String::new())];
        let events = vec![SpanEventRecord {
            name: "cache.miss".into(),
            time: super::super::system_time(start - 5),
            attributes: vec![("cache.layer".into(), "l2".into())],
        }];
        let extra = Extra { status_message: Some(""), attributes: &attributes, events: &events };
        let bytes = encode(&extra, start, &mut strings);
        let (message, attrs, evs) = decode(&bytes, start, &strings);
        assert_eq!(message.as_deref(), Some(""));
        assert_eq!(attrs, attributes);
        assert_eq!(evs, events);
        assert_eq!(strings.live(), 4);
        let mut taken = Vec::new();
        symbols(&bytes, |sym| taken.push(sym));
        assert_eq!(taken.len(), 4);
        for sym in taken {
            strings.release(sym);
        }
        assert_eq!(strings.live(), 0);
        assert_eq!(strings.bytes(), 0);
    }

    #[test]
    fn nothing_to_keep_takes_no_bytes() {
        let mut strings = Interner::default();
        let bytes = encode(&Extra { status_message: None, attributes: &[], events: &[] }, 0, &mut strings);
        assert!(bytes.is_empty());
        assert_eq!(decode(&bytes, 0, &strings), (None, Vec::new(), Vec::new()));
    }

    #[test]
    fn freed_symbols_are_reused_and_counted_per_use() {
        let mut strings = Interner::default();
        let a = strings.intern("search");
        assert_eq!(strings.intern("search"), a);
        strings.release(a);
        assert_eq!(strings.lookup("search"), Some(a));
        strings.release(a);
        assert_eq!(strings.lookup("search"), None);
        let b = strings.intern("gateway");
        assert_eq!(b, a, "the freed symbol is reused");
        assert_eq!(strings.resolve(b), "gateway");
    }
}
