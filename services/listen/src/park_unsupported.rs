//! Parking idle connections needs epoll: elsewhere every connection waits in its task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::{Limits, Stats};

pub(crate) struct Parking;

pub(crate) enum Turn {
    Woken(Vec<(std::net::TcpStream, SocketAddr)>),
    Tended,
}

impl Parking {
    pub(crate) fn new(_limits: Limits, _stats: Stats) -> std::io::Result<Parking> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    pub(crate) fn park(&self, stream: std::net::TcpStream, _since: Instant) -> Result<(), std::net::TcpStream> {
        Err(stream)
    }

    pub(crate) fn close(&self) -> usize {
        0
    }
}

pub(crate) struct Attendant;

impl Attendant {
    pub(crate) fn new(_parking: Arc<Parking>, _pressure: watch::Receiver<u32>) -> std::io::Result<Attendant> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    pub(crate) async fn turn(&mut self, _idle: Duration) -> Turn {
        std::future::pending().await
    }
}
