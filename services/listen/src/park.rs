//! Idle keep-alive connections parked outside tasks.
//!
//! A connection waiting in a task for its next request holds the task, its future at its
//! largest state's size, its timers and its registration with the runtime's reactor: more
//! than a kilobyte each, where nginx keeps a connection struct of a few hundred bytes. A
//! service whose connections can start over from nothing between requests (the gateway's
//! own HTTP/1.1 path) hands an idle one to its listener's [`Parking`] instead
//! ([`crate::Conn::park`]): the socket leaves the runtime's reactor for an epoll set of
//! the listener's own, and all that is kept is the socket and when it went idle (24 bytes
//! with the list's links). The listener's accept loop waits on that set beside the
//! listener: a parked connection that becomes readable (a request, or the client
//! closing) goes back into the runtime and to a new task, its client's address asked of
//! the socket again; one idle past the idle timeout (scaled by pressure, as every other
//! wait) is closed; shutdown closes them all.
//!
//! The parked connections of a lot are kept oldest first in a doubly linked list through
//! a slab, so that waking one is O(1) and the next to expire is the first.

use rustix::event::epoll;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::{Limits, Stats};

/// No slot: the end of a list.
const NONE: u32 = u32::MAX;
/// Parked connections handed back per wait of the epoll set.
const EVENTS_PER_WAIT: usize = 256;

/// One listener's parked connections and the epoll set they wait in. A parked connection
/// keeps the slot it took at accept and stays in its listener's `open` count; whatever
/// closes it here (the idle timeout, shutdown, this being dropped) gives both back.
pub(crate) struct Parking {
    epoll: OwnedFd,
    lot: Mutex<Lot>,
    limits: Limits,
    stats: Stats,
    /// Tells the accept loop that the first deadline may have moved (a connection parked
    /// into an empty lot).
    pub(crate) changed: tokio::sync::Notify,
}

/// A parked connection.
struct Parked {
    stream: std::net::TcpStream,
    /// Idle since (the end of its last answer), in nanoseconds from the lot's epoch.
    since: u64,
    older: u32,
    newer: u32,
}

enum Slot {
    Taken(Parked),
    Free { next: u32 },
}

struct Lot {
    /// What `Parked::since` counts from.
    epoch: Instant,
    slots: Vec<Slot>,
    free: u32,
    oldest: u32,
    newest: u32,
    len: usize,
    /// Shutdown started: nothing more is parked.
    closed: bool,
}

impl AsRawFd for Parking {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

impl Parking {
    pub(crate) fn new(limits: Limits, stats: Stats) -> std::io::Result<Parking> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        Ok(Parking {
            epoll,
            limits,
            stats,
            lot: Mutex::new(Lot {
                epoch: Instant::now(),
                slots: Vec::new(),
                free: NONE,
                oldest: NONE,
                newest: NONE,
                len: 0,
                closed: false,
            }),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn lot(&self) -> std::sync::MutexGuard<'_, Lot> {
        // A panic while the lock was held left the lists whole (no step of theirs panics).
        self.lot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Parks `stream`, idle since `since`. Gives it back when it cannot be parked (the
    /// lot is closed, or the epoll set refused it).
    pub(crate) fn park(&self, stream: std::net::TcpStream, since: Instant) -> Result<(), std::net::TcpStream> {
        let mut lot = self.lot();
        if lot.closed {
            return Err(stream);
        }
        let since = lot.nanos(since);
        let slot = lot.insert(Parked { stream, since, older: NONE, newer: NONE });
        let Slot::Taken(parked) = &lot.slots[slot as usize] else { unreachable!("just inserted") };
        // Level-triggered: bytes that arrived before this are reported at once.
        let added = epoll::add(
            &self.epoll,
            &parked.stream,
            epoll::EventData::new_u64(u64::from(slot)),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        );
        if added.is_err() {
            return Err(lot.remove(slot).stream);
        }
        self.stats.parked.inc();
        if lot.oldest == slot {
            self.changed.notify_one();
        }
        Ok(())
    }

    /// Takes out the parked connections that became readable (a request, or the client
    /// closing), out of the epoll set, each with its client's address. One whose address
    /// the socket no longer knows (reset by the client) is closed here.
    pub(crate) fn take_ready(&self) -> Vec<(std::net::TcpStream, SocketAddr)> {
        let mut events =
            [epoll::Event { flags: epoll::EventFlags::empty(), data: epoll::EventData::new_u64(0) }; EVENTS_PER_WAIT];
        let mut lot = self.lot();
        let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        let Ok(count) = epoll::wait(&self.epoll, &mut events[..], Some(&zero)) else { return Vec::new() };
        let mut ready = Vec::with_capacity(count);
        let mut reset = 0;
        for event in &events[..count] {
            let Ok(slot) = u32::try_from(event.data.u64()) else { continue };
            if !matches!(lot.slots.get(slot as usize), Some(Slot::Taken(_))) {
                continue;
            }
            let parked = lot.remove(slot);
            let _ = epoll::delete(&self.epoll, &parked.stream);
            match parked.stream.peer_addr() {
                Ok(client) => ready.push((parked.stream, client)),
                Err(_) => reset += 1,
            }
        }
        drop(lot);
        // Their slots go with them, to the connections they become again.
        self.stats.parked.dec_by(ready.len() as i64);
        self.release(reset);
        ready
    }

    /// When the connection idle longest went idle.
    pub(crate) fn oldest_since(&self) -> Option<Instant> {
        let lot = self.lot();
        match lot.slots.get(lot.oldest as usize) {
            Some(Slot::Taken(parked)) => Some(lot.instant(parked.since)),
            _ => None,
        }
    }

    /// Closes the connections idle since `before` or earlier (counted as idle
    /// timeouts); returns how many.
    pub(crate) fn expire(&self, before: Instant) -> usize {
        let mut lot = self.lot();
        let before = lot.nanos(before);
        let mut closed = 0;
        while let Some(Slot::Taken(parked)) = lot.slots.get(lot.oldest as usize) {
            if parked.since > before {
                break;
            }
            let oldest = lot.oldest;
            // Closing the socket takes it out of the epoll set.
            drop(lot.remove(oldest));
            closed += 1;
        }
        drop(lot);
        self.stats.idle_timeouts.inc_by(closed as u64);
        self.release(closed);
        closed
    }

    /// Closes every parked connection and parks no more; returns how many were closed.
    pub(crate) fn close(&self) -> usize {
        let mut lot = self.lot();
        lot.closed = true;
        let closed = lot.len;
        lot.slots = Vec::new();
        (lot.free, lot.oldest, lot.newest, lot.len) = (NONE, NONE, NONE, 0);
        drop(lot);
        self.release(closed);
        closed
    }

    /// Gives back what `count` parked connections, now closed, held.
    fn release(&self, count: usize) {
        self.stats.parked.dec_by(count as i64);
        for _ in 0..count {
            self.stats.open.dec();
            self.limits.give_back();
        }
    }

    /// Connections parked now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lot().len
    }
}

/// What happened to a listener's parked connections.
pub(crate) enum Turn {
    /// These became readable and are out of the lot.
    Woken(Vec<(std::net::TcpStream, SocketAddr)>),
    /// Nothing for the accept loop: those idle past the timeout were closed, or the first
    /// deadline or the pressure changed.
    Tended,
}

/// The accept loop's side of a [`Parking`]: its epoll set registered with the runtime.
pub(crate) struct Attendant {
    ready: AsyncFd<Arc<Parking>>,
    pressure: watch::Receiver<u32>,
}

impl Attendant {
    pub(crate) fn new(parking: Arc<Parking>, pressure: watch::Receiver<u32>) -> std::io::Result<Attendant> {
        // The safe constructor, deprecated for any `AsRawFd` whose descriptor could change
        // or close while registered; this one's is the `OwnedFd` the `Parking` owns, open
        // and the same until the `AsyncFd` (holding the `Parking`) is dropped.
        #[allow(deprecated)]
        Ok(Attendant { ready: AsyncFd::with_interest(parking, tokio::io::Interest::READABLE)?, pressure })
    }

    /// Waits for the next thing to happen to the parked connections, `idle` being the
    /// idle timeout under the current pressure.
    pub(crate) async fn turn(&mut self, idle: Duration) -> Turn {
        let parking = self.ready.get_ref().clone();
        let deadline = parking.oldest_since().map(|since| since + idle);
        tokio::select! {
            guard = self.ready.readable() => {
                let Ok(mut guard) = guard else { return std::future::pending().await };
                let woken = parking.take_ready();
                if woken.is_empty() {
                    guard.clear_ready();
                }
                Turn::Woken(woken)
            }
            () = sleep_until(deadline) => {
                if let Some(before) = Instant::now().checked_sub(idle) {
                    parking.expire(before);
                }
                Turn::Tended
            }
            () = parking.changed.notified() => Turn::Tended,
            changed = self.pressure.changed() => {
                if changed.is_err() {
                    // The limits outlive their listeners; never reached.
                    std::future::pending::<()>().await;
                }
                Turn::Tended
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

impl Drop for Parking {
    /// The accept loop dropped without shutting down (its runtime ended): the parked
    /// connections close and their slots come back all the same.
    fn drop(&mut self) {
        self.close();
    }
}

impl Lot {
    /// `at` in nanoseconds from the epoch (instants before it count as the epoch).
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    /// Puts `parked` into a free slot, in the list by when it went idle (nearly always
    /// last: connections park a fixed while after going idle).
    fn insert(&mut self, mut parked: Parked) -> u32 {
        let slot = if self.free == NONE {
            self.slots.push(Slot::Free { next: NONE });
            u32::try_from(self.slots.len() - 1).expect("fewer parked connections than descriptors")
        } else {
            self.free
        };
        // After the newest that went idle before it.
        let mut older = self.newest;
        while let Some(Slot::Taken(before)) = self.slots.get(older as usize) {
            if before.since <= parked.since {
                break;
            }
            older = before.older;
        }
        let newer = match self.slots.get(older as usize) {
            Some(Slot::Taken(before)) => before.newer,
            _ => self.oldest,
        };
        (parked.older, parked.newer) = (older, newer);
        let Slot::Free { next } = std::mem::replace(&mut self.slots[slot as usize], Slot::Taken(parked)) else {
            unreachable!("the free list holds free slots")
        };
        self.free = next;
        self.set_newer(older, slot);
        self.set_older(newer, slot);
        self.len += 1;
        slot
    }

    fn remove(&mut self, slot: u32) -> Parked {
        let Slot::Taken(parked) = std::mem::replace(&mut self.slots[slot as usize], Slot::Free { next: self.free })
        else {
            unreachable!("only taken slots are removed")
        };
        self.free = slot;
        self.set_newer(parked.older, parked.newer);
        self.set_older(parked.newer, parked.older);
        self.len -= 1;
        parked
    }

    /// Links `slot` after `older` (the list's first when `older` is none).
    fn set_newer(&mut self, older: u32, slot: u32) {
        match self.slots.get_mut(older as usize) {
            Some(Slot::Taken(parked)) => parked.newer = slot,
            _ => self.oldest = slot,
        }
    }

    /// Links `slot` before `newer` (the list's last when `newer` is none).
    fn set_older(&mut self, newer: u32, slot: u32) {
        match self.slots.get_mut(newer as usize) {
            Some(Slot::Taken(parked)) => parked.older = slot,
            _ => self.newest = slot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::time::Duration;

    fn pair(listener: &std::net::TcpListener) -> (std::net::TcpStream, std::net::TcpStream) {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server)
    }

    #[test]
    fn parked_connections_wake_on_bytes_or_close_and_expire_oldest_first() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let limits = Limits::new(crate::Settings::default());
        let stats = Stats::default();
        let parking = Parking::new(limits.clone(), stats.clone()).unwrap();
        // Five connections accepted and counted, as the accept loop would.
        for _ in 0..5 {
            assert!(limits.take());
            stats.open.inc();
        }
        let start = Instant::now();
        let mut clients = Vec::new();
        // Parked out of order: the list still runs by when each went idle.
        for offset in [0u64, 30, 10, 20, 40] {
            let (client, server) = pair(&listener);
            let addr = client.local_addr().unwrap();
            parking.park(server, start + Duration::from_millis(offset)).unwrap();
            clients.push((offset, client, addr));
        }
        assert_eq!(parking.len(), 5);
        assert_eq!(parking.oldest_since(), Some(start));
        assert!(parking.take_ready().is_empty(), "nothing sent yet");

        // One sends a request, one closes: both wake; the others stay.
        let (_, mut sender, sender_addr) = clients.remove(1);
        sender.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let (_, closer, closer_addr) = clients.remove(2);
        drop(closer);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut woken = Vec::new();
        while woken.len() < 2 && Instant::now() < deadline {
            woken.extend(parking.take_ready().into_iter().map(|(_, client)| client));
            std::thread::sleep(Duration::from_millis(5));
        }
        woken.sort();
        let mut expected = vec![sender_addr, closer_addr];
        expected.sort();
        assert_eq!(woken, expected);
        assert_eq!(parking.len(), 3);
        assert_eq!(stats.parked.get(), 3);
        // The woken two still hold their slots (their connections go on).
        assert_eq!((limits.open(), stats.open.get()), (5, 5));

        // Expiry takes the oldest first, up to the instant given, and gives back their
        // slots.
        assert_eq!(parking.expire(start + Duration::from_millis(10)), 2);
        assert_eq!(parking.oldest_since(), Some(start + Duration::from_millis(40)));
        assert_eq!(parking.len(), 1);
        assert_eq!((limits.open(), stats.open.get(), stats.parked.get()), (3, 3, 1));
        assert_eq!(stats.idle_timeouts.get(), 2);
        // A slot freed is taken again; closing shuts out later parking.
        let (_client, server) = pair(&listener);
        parking.park(server, start + Duration::from_millis(50)).unwrap();
        assert_eq!(parking.close(), 2);
        assert_eq!((limits.open(), stats.open.get(), stats.parked.get()), (1, 1, 0));
        let (_client, server) = pair(&listener);
        assert!(parking.park(server, start).is_err());
        assert_eq!(parking.oldest_since(), None);
    }

    #[test]
    fn a_parked_connection_costs_the_lot_24_bytes() {
        // What an idle connection costs once parked, beside its socket in the kernel.
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }

    #[test]
    fn dropping_the_lot_closes_its_connections_and_gives_back_their_slots() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let limits = Limits::new(crate::Settings::default());
        let stats = Stats::default();
        let parking = Parking::new(limits.clone(), stats.clone()).unwrap();
        let mut clients = Vec::new();
        for _ in 0..3 {
            assert!(limits.take());
            stats.open.inc();
            let (client, server) = pair(&listener);
            parking.park(server, Instant::now()).unwrap();
            clients.push(client);
        }
        drop(parking);
        assert_eq!((limits.open(), stats.open.get(), stats.parked.get()), (0, 0, 0));
        for mut client in clients {
            client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut byte = [0u8; 1];
            assert!(matches!(std::io::Read::read(&mut client, &mut byte), Ok(0) | Err(_)), "closed");
        }
    }
}
