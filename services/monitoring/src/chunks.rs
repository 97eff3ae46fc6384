//! A series' samples, compressed: chunks of up to [`CHUNK_SAMPLES`] samples, each encoded
//! with delta-of-delta timestamps and XOR-ed values (the scheme of Facebook's Gorilla paper,
//! which Prometheus's head chunks use too). A scrape at a steady interval of a value that
//! changes little costs a bit or two per timestamp and a few bits per value, instead of the
//! 24 bytes of a plain `(t, v, stale)` point.
//!
//! Samples are appended in time order; the newest chunk is open and grows by appending,
//! older ones are sealed into exact-sized buffers. A sample at or before the newest one (a
//! pushed sample with an old timestamp, or a second value for one time) re-encodes the
//! chunks from the one it lands in. Limits apply without re-encoding: whole chunks are
//! dropped once every sample in them is outside the limits, and readers skip the samples of
//! the oldest chunk that are (over the sample count, or older than the retention).
//!
//! A stale marker is stored as Prometheus stores it, as one NaN bit pattern
//! ([`STALE_BITS`]); any other NaN is a value.

use std::collections::VecDeque;

/// Samples a chunk holds before it is sealed (Prometheus's head chunks hold 120).
pub const CHUNK_SAMPLES: u32 = 120;

/// The bits of a stale marker: Prometheus's `StaleNaN`. No value parsed from text or pushed
/// through the API has them (a parsed NaN is the canonical quiet NaN).
pub const STALE_BITS: u64 = 0x7ff0_0000_0000_0002;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub t: i64,
    pub v: f64,
    /// A stale marker: the series ended here.
    pub stale: bool,
}

impl Point {
    fn bits(&self) -> u64 {
        if self.stale { STALE_BITS } else { self.v.to_bits() }
    }

    fn from_bits(t: i64, bits: u64) -> Point {
        if bits == STALE_BITS {
            Point { t, v: f64::NAN, stale: true }
        } else {
            Point { t, v: f64::from_bits(bits), stale: false }
        }
    }
}

/// What bounds a series' samples: at most `max_samples` of them, none older than the newest
/// one less `retention_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_samples: usize,
    pub retention_ms: i64,
}

// ---- Bits ------------------------------------------------------------------------------

/// Appends bits, most significant first.
#[derive(Debug, Clone, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits still free in the last byte (0: a new byte is needed).
    free: u8,
}

impl BitWriter {
    /// Writes the `n` (at most 64) low bits of `value`.
    fn write(&mut self, value: u64, mut n: u8) {
        while n > 0 {
            if self.free == 0 {
                self.bytes.push(0);
                self.free = 8;
            }
            let take = n.min(self.free);
            let chunk = ((value >> (n - take)) & ((1u64 << take) - 1)) as u8;
            *self.bytes.last_mut().expect("a byte") |= chunk << (self.free - take);
            self.free -= take;
            n -= take;
        }
    }

    fn bit(&mut self, one: bool) {
        self.write(u64::from(one), 1);
    }
}

/// Reads what a [`BitWriter`] wrote.
struct BitReader<'a> {
    bytes: &'a [u8],
    /// The next bit's position.
    at: usize,
}

impl BitReader<'_> {
    /// The next `n` (at most 64) bits; zeros past the end (a chunk's count says where its
    /// samples end, so a well-formed chunk is never read past it).
    fn read(&mut self, mut n: u8) -> u64 {
        let mut out = 0u64;
        while n > 0 {
            let byte = self.bytes.get(self.at / 8).copied().unwrap_or(0);
            let offset = (self.at % 8) as u8;
            let take = n.min(8 - offset);
            let chunk = (byte >> (8 - offset - take)) & ((1u16 << take) - 1) as u8;
            out = (out << take) | u64::from(chunk);
            self.at += usize::from(take);
            n -= take;
        }
        out
    }

    fn bit(&mut self) -> bool {
        self.read(1) == 1
    }
}

// ---- One chunk's encoding ----------------------------------------------------------------

/// The delta-of-delta classes: a prefix of ones ended by a zero, then that many bits.
/// A zero delta of delta is the single bit `0`; past the last class, `1111` and 64 bits.
const DOD_CLASSES: [u8; 3] = [14, 17, 20];

/// Whether `value` fits `bits` bits as two's complement.
fn fits(value: i64, bits: u8) -> bool {
    let half = 1i64 << (bits - 1);
    (-half..half).contains(&value)
}

/// What encoding the next sample depends on.
#[derive(Debug, Clone, Copy, Default)]
struct State {
    t: i64,
    delta: i64,
    bits: u64,
    /// The window of the last XOR written with its own window: leading zeros and
    /// significant bits.
    leading: u8,
    significant: u8,
}

/// Writes one sample after `state`'s (`count` samples written so far).
fn encode(out: &mut BitWriter, state: &mut State, count: u32, t: i64, bits: u64) {
    if count == 0 {
        out.write(t as u64, 64);
        out.write(bits, 64);
        *state = State { t, delta: 0, bits, leading: 0, significant: 0 };
        return;
    }
    let delta = t - state.t;
    let dod = delta.wrapping_sub(state.delta);
    if dod == 0 {
        out.bit(false);
    } else {
        match DOD_CLASSES.iter().position(|&n| fits(dod, n)) {
            Some(class) => {
                // `class + 1` ones and a zero, then the bits.
                out.write((1u64 << (class + 2)) - 2, class as u8 + 2);
                out.write(dod as u64, DOD_CLASSES[class]);
            }
            None => {
                out.write(0b1111, 4);
                out.write(dod as u64, 64);
            }
        }
    }
    let xor = bits ^ state.bits;
    if xor == 0 {
        out.bit(false);
    } else {
        let leading = (xor.leading_zeros() as u8).min(31);
        let trailing = xor.trailing_zeros() as u8;
        let fits_window =
            state.significant > 0 && leading >= state.leading && trailing >= 64 - state.leading - state.significant;
        if fits_window {
            out.write(0b10, 2);
            let shift = 64 - state.leading - state.significant;
            out.write(xor >> shift, state.significant);
        } else {
            let significant = 64 - leading - trailing;
            out.write(0b11, 2);
            out.write(u64::from(leading), 5);
            out.write(u64::from(significant - 1), 6);
            out.write(xor >> trailing, significant);
            state.leading = leading;
            state.significant = significant;
        }
    }
    *state = State { t, delta, bits, ..*state };
}

/// Reads one sample after `state`'s.
fn decode(input: &mut BitReader<'_>, state: &mut State, first: bool) -> Point {
    if first {
        let t = input.read(64) as i64;
        let bits = input.read(64);
        *state = State { t, delta: 0, bits, leading: 0, significant: 0 };
        return Point::from_bits(t, bits);
    }
    let mut ones = 0;
    while ones < 4 && input.bit() {
        ones += 1;
    }
    let dod = match ones {
        0 => 0,
        4 => input.read(64) as i64,
        class => {
            let n = DOD_CLASSES[class - 1];
            let raw = input.read(n);
            // Sign-extend the class's bits.
            ((raw << (64 - n)) as i64) >> (64 - n)
        }
    };
    state.delta = state.delta.wrapping_add(dod);
    state.t += state.delta;
    if input.bit() {
        if input.bit() {
            state.leading = input.read(5) as u8;
            state.significant = input.read(6) as u8 + 1;
        }
        let shift = 64 - state.leading - state.significant;
        state.bits ^= input.read(state.significant) << shift;
    }
    Point::from_bits(state.t, state.bits)
}

/// A sealed chunk: its samples encoded, with their count and time span.
#[derive(Debug, Clone)]
struct Sealed {
    bytes: Box<[u8]>,
    count: u32,
    first_t: i64,
    last_t: i64,
}

/// The open chunk: what is written so far and the state the next sample continues from.
#[derive(Debug, Clone, Default)]
struct Open {
    out: BitWriter,
    state: State,
    count: u32,
    first_t: i64,
}

/// The samples of one chunk, decoded in order.
struct Decoder<'a> {
    input: BitReader<'a>,
    state: State,
    read: u32,
    count: u32,
}

impl Iterator for Decoder<'_> {
    type Item = Point;

    fn next(&mut self) -> Option<Point> {
        if self.read == self.count {
            return None;
        }
        let point = decode(&mut self.input, &mut self.state, self.read == 0);
        self.read += 1;
        Some(point)
    }
}

// ---- A series' samples ---------------------------------------------------------------------

/// A series' samples in time order, compressed and bounded.
#[derive(Debug, Clone, Default)]
pub struct Points {
    sealed: VecDeque<Sealed>,
    open: Open,
    /// Samples encoded in all chunks.
    stored: usize,
    /// The oldest stored samples that are past the sample bound: all in the oldest chunk.
    hidden: usize,
    /// The oldest time kept: the newest sample's time less the retention.
    horizon: i64,
    /// The newest sample, as it was written.
    newest: Option<Point>,
}

/// One chunk as readers see it.
struct ChunkRef<'a> {
    bytes: &'a [u8],
    count: u32,
    first_t: i64,
    last_t: i64,
}

impl Points {
    /// Chunk `index`, counting from the oldest; the open one is the last.
    fn chunk(&self, index: usize) -> ChunkRef<'_> {
        match self.sealed.get(index) {
            Some(c) => ChunkRef { bytes: &c.bytes, count: c.count, first_t: c.first_t, last_t: c.last_t },
            None => ChunkRef {
                bytes: &self.open.out.bytes,
                count: self.open.count,
                first_t: self.open.first_t,
                last_t: self.open.state.t,
            },
        }
    }

    fn chunks(&self) -> impl DoubleEndedIterator<Item = ChunkRef<'_>> + ExactSizeIterator + '_ {
        let count = self.sealed.len() + usize::from(self.open.count > 0);
        (0..count).map(|i| self.chunk(i))
    }

    /// The kept samples of chunk `index` (counting from the oldest).
    fn decoded<'a>(&'a self, index: usize, chunk: ChunkRef<'a>) -> impl Iterator<Item = Point> + 'a {
        let skip = if index == 0 { self.hidden } else { 0 };
        let horizon = self.horizon;
        Decoder { input: BitReader { bytes: chunk.bytes, at: 0 }, state: State::default(), read: 0, count: chunk.count }
            .skip(skip)
            .filter(move |p| p.t >= horizon)
    }

    /// Every kept sample, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Point> + '_ {
        self.chunks().enumerate().flat_map(move |(i, chunk)| self.decoded(i, chunk))
    }

    /// How many samples are kept.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.newest.is_none()
    }

    /// The newest sample (a marker or a value).
    pub fn last(&self) -> Option<Point> {
        self.newest
    }

    /// The newest sample that is not a stale marker.
    pub fn last_value(&self) -> Option<Point> {
        match self.newest {
            Some(p) if !p.stale => Some(p),
            Some(_) => self.iter().filter(|p| !p.stale).last(),
            None => None,
        }
    }

    /// The newest sample at or before `t`.
    pub fn at_or_before(&self, t: i64) -> Option<Point> {
        let newest = self.newest?;
        if newest.t <= t {
            return Some(newest);
        }
        // The newest chunk that starts at or before `t` holds the answer, if any sample does:
        // every older sample is older than that chunk's first.
        let (index, chunk) = self.chunks().enumerate().rev().find(|(_, chunk)| chunk.first_t <= t)?;
        self.decoded(index, chunk).take_while(|p| p.t <= t).last()
    }

    /// The kept samples in `(start, end]`.
    pub fn range(&self, start: i64, end: i64) -> impl Iterator<Item = Point> + '_ {
        self.chunks()
            .enumerate()
            .filter(move |(_, chunk)| chunk.last_t > start && chunk.first_t <= end)
            .flat_map(move |(i, chunk)| self.decoded(i, chunk))
            .skip_while(move |p| p.t <= start)
            .take_while(move |p| p.t <= end)
    }

    /// Writes `point`: appended when it is the newest, otherwise put in its place (a point
    /// at a time already held replaces it). Then applies `bounds`.
    pub fn insert(&mut self, point: Point, bounds: &Bounds) {
        match self.newest {
            Some(newest) if point.t <= newest.t => self.rewrite(point),
            _ => self.append(point),
        }
        self.bound(bounds);
    }

    fn append(&mut self, point: Point) {
        if self.open.count == CHUNK_SAMPLES {
            self.seal();
        }
        let open = &mut self.open;
        if open.count == 0 {
            open.first_t = point.t;
        }
        encode(&mut open.out, &mut open.state, open.count, point.t, point.bits());
        open.count += 1;
        self.stored += 1;
        self.newest = Some(point);
    }

    fn seal(&mut self) {
        let open = std::mem::take(&mut self.open);
        self.sealed.push_back(Sealed {
            bytes: open.out.bytes.into_boxed_slice(),
            count: open.count,
            first_t: open.first_t,
            last_t: open.state.t,
        });
    }

    /// Puts `point` among the samples it does not follow: the chunks from the one it lands
    /// in are decoded, changed and written again.
    fn rewrite(&mut self, point: Point) {
        let from = self.sealed.iter().rposition(|c| c.first_t <= point.t).unwrap_or(0);
        let from = if self.open.count > 0 && self.open.first_t <= point.t { self.sealed.len() } else { from };
        let mut points: Vec<Point> = Vec::new();
        for (i, chunk) in self.chunks().enumerate().skip(from) {
            points.extend(self.decoded(i, chunk));
        }
        match points.binary_search_by(|p| p.t.cmp(&point.t)) {
            Ok(at) => points[at] = point,
            Err(at) => points.insert(at, point),
        }
        if from == 0 {
            // The hidden and expired samples were left out of `points`: none stays behind.
            self.hidden = 0;
        }
        self.stored -= self.chunks().skip(from).map(|c| c.count as usize).sum::<usize>();
        self.sealed.truncate(from);
        // Appending continues in a new open chunk after the last sealed one.
        self.open = Open::default();
        for p in points {
            self.append(p);
        }
    }

    /// Hides what is past the sample count and the retention; drops chunks that hold
    /// nothing kept.
    fn bound(&mut self, bounds: &Bounds) {
        let Some(newest) = self.newest else { return };
        self.horizon = newest.t.saturating_sub(bounds.retention_ms);
        self.hidden = self.stored.saturating_sub(bounds.max_samples.max(1));
        while let Some(oldest) = self.sealed.front() {
            let all_hidden = self.hidden >= oldest.count as usize;
            if !(all_hidden || oldest.last_t < self.horizon) {
                break;
            }
            let count = oldest.count as usize;
            self.sealed.pop_front();
            self.stored -= count;
            self.hidden = self.hidden.saturating_sub(count);
        }
    }

    /// Bytes held for the samples (buffers and their bookkeeping), for tests and benches.
    pub fn heap_bytes(&self) -> usize {
        self.sealed.capacity() * std::mem::size_of::<Sealed>()
            + self.sealed.iter().map(|c| c.bytes.len()).sum::<usize>()
            + self.open.out.bytes.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain store the chunks replace: every point kept as it is, bounded one point at
    /// a time.
    #[derive(Default)]
    struct Plain(VecDeque<Point>);

    impl Plain {
        fn insert(&mut self, point: Point, bounds: &Bounds) {
            let at = self.0.partition_point(|p| p.t < point.t);
            if self.0.get(at).is_some_and(|p| p.t == point.t) {
                self.0[at] = point;
            } else {
                self.0.insert(at, point);
            }
            while self.0.len() > bounds.max_samples.max(1) {
                self.0.pop_front();
            }
            let horizon = self.0.back().map(|p| p.t.saturating_sub(bounds.retention_ms)).unwrap_or(i64::MIN);
            while self.0.front().is_some_and(|p| p.t < horizon) {
                self.0.pop_front();
            }
        }
    }

    /// Points compare by their bits, so that NaN values compare too.
    fn same(a: &[Point], b: &[Point]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.t == y.t && x.bits() == y.bits() && x.stale == y.stale)
    }

    fn values() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(1.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MAX),
            Just(f64::MIN_POSITIVE),
            (0u32..1000).prop_map(f64::from),
            any::<f64>(),
            any::<u64>().prop_map(f64::from_bits),
        ]
    }

    /// Steps in time: mostly a steady interval with jitter, sometimes far, backwards, or
    /// onto a time already held.
    fn steps() -> impl Strategy<Value = i64> {
        prop_oneof![
            8 => Just(5_000i64),
            4 => 4_990i64..5_010,
            2 => 1i64..100_000,
            1 => -20_000i64..=0,
            1 => Just(0i64),
            1 => 1i64..1 << 40,
        ]
    }

    fn points() -> impl Strategy<Value = Vec<Point>> {
        prop::collection::vec((steps(), values(), prop::bool::weighted(0.05)), 1..700).prop_map(|steps| {
            let mut t = -1_000_000i64;
            steps
                .into_iter()
                .map(|(step, v, stale)| {
                    t = t.saturating_add(step);
                    if stale { Point { t, v: f64::NAN, stale: true } } else { Point { t, v, stale: false } }
                })
                .collect()
        })
    }

    fn bounds() -> impl Strategy<Value = Bounds> {
        (prop_oneof![Just(720usize), 1usize..300], prop_oneof![Just(3_600_000i64), 1i64..2_000_000, Just(i64::MAX)])
            .prop_map(|(max_samples, retention_ms)| Bounds { max_samples, retention_ms })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever is written, in whatever order, the chunks hold and answer what the
        /// plain store holds and answers.
        #[test]
        fn chunks_hold_what_plain_points_hold(points in points(), bounds in bounds(), probes in prop::collection::vec(any::<i64>(), 8)) {
            let mut chunks = Points::default();
            let mut plain = Plain::default();
            for p in &points {
                chunks.insert(*p, &bounds);
                plain.insert(*p, &bounds);
            }
            let held: Vec<Point> = chunks.iter().collect();
            let expected: Vec<Point> = plain.0.iter().copied().collect();
            prop_assert!(same(&held, &expected), "held {} expected {}", held.len(), expected.len());
            prop_assert_eq!(chunks.len(), expected.len());
            prop_assert_eq!(chunks.last().map(|p| p.t), expected.last().map(|p| p.t));
            let last_value = expected.iter().rev().find(|p| !p.stale).copied();
            prop_assert!(same(&chunks.last_value().into_iter().collect::<Vec<_>>(), &last_value.into_iter().collect::<Vec<_>>()));
            let first = expected.first().map(|p| p.t).unwrap_or(0);
            let last = expected.last().map(|p| p.t).unwrap_or(0);
            let mut times: Vec<i64> = probes.iter().map(|x| first.saturating_add(x.rem_euclid(last.saturating_sub(first).saturating_add(2).max(1)))).collect();
            times.extend(expected.iter().take(5).map(|p| p.t));
            times.extend([first - 1, last, last + 1]);
            for t in times {
                let at = chunks.at_or_before(t);
                let want = expected.iter().rev().find(|p| p.t <= t).copied();
                prop_assert!(same(&at.into_iter().collect::<Vec<_>>(), &want.into_iter().collect::<Vec<_>>()), "at {t}");
                for window in [1i64, 5_000, 60_000, 300_000] {
                    let got: Vec<Point> = chunks.range(t - window, t).collect();
                    let want: Vec<Point> = expected.iter().filter(|p| p.t > t - window && p.t <= t).copied().collect();
                    prop_assert!(same(&got, &want), "range ({}, {t}]", t - window);
                }
            }
        }
    }

    #[test]
    fn a_steady_scrape_takes_a_few_bits_a_sample() {
        let bounds = Bounds { max_samples: 720, retention_ms: 3_600_000 };
        let mut points = Points::default();
        for i in 0..720i64 {
            // A counter that grows by a few per scrape, scraped every 5 s with a little jitter.
            points.insert(Point { t: 1_700_000_000_000 + i * 5_000 + i % 3, v: (i * 7) as f64, stale: false }, &bounds);
        }
        assert_eq!(points.len(), 720);
        let bytes = points.heap_bytes();
        assert!(bytes < 720 * 4, "{bytes} bytes for 720 samples");
    }

    #[test]
    fn a_full_series_holds_its_bound_and_drops_whole_chunks() {
        let bounds = Bounds { max_samples: 720, retention_ms: i64::MAX };
        let mut points = Points::default();
        for t in 0..1000 {
            points.insert(Point { t, v: t as f64, stale: false }, &bounds);
        }
        assert_eq!(points.len(), 720);
        assert_eq!(points.iter().next().map(|p| p.t), Some(280));
        // At most one chunk's worth more than the bound stays encoded.
        assert!(points.stored < 720 + CHUNK_SAMPLES as usize, "{}", points.stored);
    }
}
