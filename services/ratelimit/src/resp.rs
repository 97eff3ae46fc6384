//! The GCRA batch's own round trip to Redis: EVALSHA written and its array of integers read
//! over a plain TCP connection from a per-thread pool, without a general client's command
//! objects, multiplexing task and reply parser. Per decision that general machinery cost
//! several times the script's own work in Redis; this is one write and (usually) one read
//! per batch. Only plain TCP addresses use it; TLS and Unix sockets keep `redis`'s client.

use std::cell::RefCell;
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// Idle connections kept per thread and store; more are closed when they come back.
const MAX_IDLE: usize = 8;
/// The largest reply read (a batch of thousands of decisions fits many times over).
const REPLY_LIMIT: usize = 4 * 1024 * 1024;

thread_local! {
    static IDLE: RefCell<HashMap<u64, Vec<TcpStream>>> = RefCell::new(HashMap::new());
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub address: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
}

/// Why a round trip failed.
#[derive(Debug)]
pub(crate) enum RoundTripError {
    /// No connection could be made (or it was refused during setup).
    Connect(String),
    /// The connection failed (reset, closed, timed out, malformed reply).
    Io(String),
    /// Redis answered with an error.
    Redis(String),
}

impl RoundTripError {
    /// What went wrong, in words.
    pub(crate) fn reason(self) -> String {
        match self {
            RoundTripError::Connect(reason) | RoundTripError::Io(reason) | RoundTripError::Redis(reason) => reason,
        }
    }
}

/// A reply: the integers of an array reply, a bulk string (None: nil), a status line or
/// an error line.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Integers(Vec<i64>),
    Bulk(Option<Vec<u8>>),
    Simple,
    Error(String),
}

/// Appends one command in RESP (an array of bulk strings).
pub(crate) fn encode(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let mut digits = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(digits.format(parts.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for part in parts {
        out.push(b'$');
        out.extend_from_slice(digits.format(part.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

/// The line starting at `at` (without its CRLF) and where the next begins; None if the
/// buffer does not hold all of it yet.
fn line(buffer: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let end = buffer[at..].windows(2).position(|pair| pair == b"\r\n")? + at;
    Some((&buffer[at..end], end + 2))
}

fn integer(text: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| format!("malformed integer {:?} in a reply", String::from_utf8_lossy(text)))
}

/// Parses one complete reply from the start of `buffer`: Ok(None) when more bytes are
/// needed. Only the shapes the scripts and setup commands answer with are accepted.
fn parse(buffer: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some((first, mut at)) = line(buffer, 0) else { return Ok(None) };
    match first.first() {
        Some(b'+') => Ok(Some((Reply::Simple, at))),
        Some(b'-') => Ok(Some((Reply::Error(String::from_utf8_lossy(&first[1..]).into_owned()), at))),
        Some(b'$') => {
            let Ok(length) = usize::try_from(integer(&first[1..])?) else { return Ok(Some((Reply::Bulk(None), at))) };
            if buffer.len() < at + length + 2 {
                return Ok(None);
            }
            if &buffer[at + length..at + length + 2] != b"\r\n" {
                return Err("a bulk string without its CRLF".into());
            }
            Ok(Some((Reply::Bulk(Some(buffer[at..at + length].to_vec())), at + length + 2)))
        }
        Some(b'*') => {
            let count = integer(&first[1..])?;
            let count = usize::try_from(count).map_err(|_| "a nil array reply".to_string())?;
            let mut values = Vec::with_capacity(count);
            for _ in 0..count {
                let Some((item, next)) = line(buffer, at) else { return Ok(None) };
                match item.first() {
                    Some(b':') => values.push(integer(&item[1..])?),
                    _ => return Err(format!("unexpected array item {:?}", String::from_utf8_lossy(item))),
                }
                at = next;
            }
            Ok(Some((Reply::Integers(values), at)))
        }
        _ => Err(format!("unexpected reply {:?}", String::from_utf8_lossy(first))),
    }
}

/// Writes `command` and reads one reply.
async fn exchange(stream: &mut TcpStream, command: &[u8], buffer: &mut Vec<u8>) -> Result<Reply, RoundTripError> {
    let io = |error: std::io::Error| RoundTripError::Io(error.to_string());
    stream.write_all(command).await.map_err(io)?;
    buffer.clear();
    loop {
        // Straight into `buffer`: a read buffer on the stack would sit in every rate-limit
        // future, and be copied with it, for each request.
        buffer.reserve(4096);
        let read = stream.read_buf(buffer).await.map_err(io)?;
        if read == 0 {
            return Err(RoundTripError::Io("Redis closed the connection".into()));
        }
        match parse(buffer).map_err(RoundTripError::Io)? {
            Some((reply, used)) if used == buffer.len() => return Ok(reply),
            Some(_) => return Err(RoundTripError::Io("more than one reply to one command".into())),
            None if buffer.len() > REPLY_LIMIT => return Err(RoundTripError::Io("reply too large".into())),
            None => {}
        }
    }
}

async fn open(endpoint: &Endpoint) -> Result<TcpStream, RoundTripError> {
    let connect = |error: String| RoundTripError::Connect(format!("{}: {error}", endpoint.address));
    let mut stream = TcpStream::connect(&endpoint.address).await.map_err(|error| connect(error.to_string()))?;
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::new();
    let db = endpoint.db.to_string();
    let auth: Option<Vec<&[u8]>> = endpoint.password.as_deref().map(|password| match &endpoint.username {
        Some(user) => vec![b"AUTH".as_slice(), user.as_bytes(), password.as_bytes()],
        None => vec![b"AUTH".as_slice(), password.as_bytes()],
    });
    let select = (endpoint.db != 0).then(|| vec![b"SELECT".as_slice(), db.as_bytes()]);
    for parts in [auth, select].into_iter().flatten() {
        let mut command = Vec::new();
        encode(&mut command, &parts);
        match exchange(&mut stream, &command, &mut buffer).await {
            Ok(Reply::Simple) => {}
            Ok(Reply::Error(error)) => return Err(connect(error)),
            Ok(other) => return Err(connect(format!("unexpected setup reply {other:?}"))),
            Err(error) => return Err(connect(error.reason())),
        }
    }
    Ok(stream)
}

/// Runs the script `sha` (source `source`, loaded when Redis does not know it) with `keys`
/// and `args` over one of this thread's connections for `store`, by `deadline`, and
/// returns its integers. A pooled connection that fails is replaced once by a new one.
pub(crate) async fn eval_integers(
    store: u64,
    endpoint: &Endpoint,
    (sha, source): (&str, &str),
    keys: &[&[u8]],
    args: &[&[u8]],
    deadline: Instant,
) -> Result<Vec<i64>, RoundTripError> {
    let mut command = Vec::with_capacity(64 + keys.iter().chain(args).map(|part| part.len() + 16).sum::<usize>());
    let count = keys.len().to_string();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
    parts.extend([b"EVALSHA".as_slice(), sha.as_bytes(), count.as_bytes()]);
    parts.extend_from_slice(keys);
    parts.extend_from_slice(args);
    encode(&mut command, &parts);

    let run = async {
        let pooled = IDLE.with_borrow_mut(|idle| idle.get_mut(&store).and_then(Vec::pop));
        let mut fresh = pooled.is_none();
        let mut stream = match pooled {
            Some(stream) => stream,
            None => open(endpoint).await?,
        };
        let mut buffer = Vec::new();
        let mut loaded = false;
        loop {
            match exchange(&mut stream, &command, &mut buffer).await {
                Ok(Reply::Integers(values)) => {
                    IDLE.with_borrow_mut(|idle| {
                        let list = idle.entry(store).or_default();
                        if list.len() < MAX_IDLE {
                            list.push(stream);
                        }
                    });
                    return Ok(values);
                }
                Ok(Reply::Error(error)) if error.starts_with("NOSCRIPT") && !loaded => {
                    let mut load = Vec::new();
                    encode(&mut load, &[b"SCRIPT", b"LOAD", source.as_bytes()]);
                    // The reply is the script's hash.
                    match exchange(&mut stream, &load, &mut buffer).await? {
                        Reply::Bulk(Some(hash)) if hash == sha.as_bytes() => loaded = true,
                        other => {
                            return Err(RoundTripError::Redis(format!("SCRIPT LOAD answered {other:?}")));
                        }
                    }
                }
                Ok(Reply::Error(error)) => return Err(RoundTripError::Redis(error)),
                Ok(other) => return Err(RoundTripError::Io(format!("unexpected reply {other:?}"))),
                Err(RoundTripError::Io(_)) if !fresh => {
                    // An idle connection Redis closed meanwhile (restart, timeout).
                    stream = open(endpoint).await?;
                    fresh = true;
                }
                Err(error) => return Err(error),
            }
        }
    };
    timeout_at(deadline, run).await.map_err(|_| RoundTripError::Io("timed out".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"EVALSHA", b"abc", b"1", b"key", b""]);
        assert_eq!(out, b"*5\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n1\r\n$3\r\nkey\r\n$0\r\n\r\n");
    }

    #[test]
    fn replies_parse_whole_or_ask_for_more() {
        let whole = b"*4\r\n:1\r\n:-2\r\n:30\r\n:0\r\n";
        assert_eq!(parse(whole), Ok(Some((Reply::Integers(vec![1, -2, 30, 0]), whole.len()))));
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]), Ok(None), "{cut} bytes");
        }
        assert_eq!(parse(b"+OK\r\n"), Ok(Some((Reply::Simple, 5))));
        assert_eq!(parse(b"$3\r\nabc\r\n"), Ok(Some((Reply::Bulk(Some(b"abc".to_vec())), 9))));
        assert_eq!(parse(b"$3\r\nab"), Ok(None));
        assert_eq!(parse(b"$-1\r\n"), Ok(Some((Reply::Bulk(None), 5))));
        let error = b"-NOSCRIPT No matching script.\r\n";
        assert_eq!(parse(error), Ok(Some((Reply::Error("NOSCRIPT No matching script.".into()), error.len()))));
        assert!(parse(b"*1\r\n$3\r\nabc\r\n").is_err(), "only integers in arrays");
        assert!(parse(b"*1\r\n:x\r\n").is_err());
        assert!(parse(b"*-1\r\n").is_err());
        assert!(parse(b"%1\r\n").is_err());
    }
}
