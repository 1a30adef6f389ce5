//! A WAN link emulator: a TCP relay between two components that adds a one-way delay per
//! direction, an optional jitter and a bandwidth cap, holds at most about one
//! bandwidth-delay product per direction (so senders see a real link's back-pressure),
//! counts bytes per direction, and can be cut (every connection reset and new ones
//! refused, or black-holed: accepted but silent, data held) and restored on command.
//! This machine's kernel has no `netem`; the benchmark and the fault suite put this
//! between the regions instead (`docrepl link`, controlled over HTTP, see `control`).

pub mod control;
pub mod schedule;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

pub use schedule::Shape;
use schedule::Schedule;

/// Bytes read from a socket at once (one scheduled chunk).
const CHUNK: usize = 16 * 1024;

/// Whether bytes cross the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Up,
    /// Every connection is reset and new ones are refused (reset at once).
    Reset,
    /// Connections stay open and new ones are accepted, but nothing crosses; what was
    /// under way crosses once restored (as TCP retransmits after a route comes back).
    Blackhole,
}

/// The two directions' settings: `up` from the accepting side to the far one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shapes {
    pub up: Shape,
    pub down: Shape,
}

/// What the link has carried.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub state: State,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub connections: usize,
}

/// A running link; cheap to share.
pub struct Link {
    pub local_addr: SocketAddr,
    to: SocketAddr,
    shapes: RwLock<Shapes>,
    state: watch::Sender<State>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    connections: AtomicUsize,
}

impl Link {
    /// Listens on `listen` and relays each connection to `to`.
    pub async fn start(listen: SocketAddr, to: SocketAddr, shapes: Shapes) -> std::io::Result<Arc<Link>> {
        let listener = TcpListener::bind(listen).await?;
        let link = Arc::new(Link {
            local_addr: listener.local_addr()?,
            to,
            shapes: RwLock::new(shapes),
            state: watch::channel(State::Up).0,
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
        });
        tokio::spawn(Arc::clone(&link).accept(listener));
        Ok(link)
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Cuts the link (`Reset` or `Blackhole`), or restores it (`Up`).
    pub fn set_state(&self, state: State) {
        self.state.send_replace(state);
    }

    /// New settings, for bytes read from now on.
    pub fn set_shapes(&self, shapes: Shapes) {
        if let Ok(mut s) = self.shapes.write() {
            *s = shapes;
        }
    }

    pub fn shapes(&self) -> Shapes {
        self.shapes.read().map(|s| *s).unwrap_or(Shapes { up: NO_SHAPE, down: NO_SHAPE })
    }

    pub fn stats(&self) -> Stats {
        Stats {
            state: self.state(),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
        }
    }

    async fn accept(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (client, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!("link: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let link = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(e) = link.relay(client).await {
                    debug!(%peer, "link: connection ended: {e}");
                }
            });
        }
    }

    /// One connection: waits out a black hole, refuses during a reset, else connects to
    /// the far side and runs both directions until both ended or the link is reset.
    async fn relay(self: Arc<Self>, client: TcpStream) -> std::io::Result<()> {
        let mut state = self.state.subscribe();
        while *state.borrow_and_update() == State::Blackhole {
            if state.changed().await.is_err() {
                return Ok(());
            }
        }
        if self.state() == State::Reset {
            return reset(client);
        }
        let server = TcpStream::connect(self.to).await?;
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        self.connections.fetch_add(1, Ordering::Relaxed);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let up = tokio::spawn(Arc::clone(&self).direction(client_read, server_write, true));
        let down = tokio::spawn(Arc::clone(&self).direction(server_read, client_write, false));
        let _ = (up.await, down.await);
        self.connections.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// Carries one direction: a reading task schedules each chunk's arrival and queues it
    /// (at most `queue_bytes` held), this task delivers it on time. An orderly end is
    /// passed on (FIN); after a reset the socket written to closes with RST (each
    /// direction resets the socket it writes, so both ends see the reset).
    async fn direction(self: Arc<Self>, mut from: OwnedReadHalf, mut to: OwnedWriteHalf, up: bool) {
        let shape = move |link: &Link| if up { link.shapes().up } else { link.shapes().down };
        let room = Arc::new(Semaphore::new(shape(&self).queue_bytes()));
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let mut state = self.state.subscribe();
        let reader = {
            let link = Arc::clone(&self);
            let room = Arc::clone(&room);
            let mut state = self.state.subscribe();
            async move {
                let mut schedule = Schedule::default();
                let mut buf = vec![0u8; CHUNK];
                loop {
                    if !until_up(&mut state).await {
                        return;
                    }
                    let n = tokio::select! {
                        read = from.read(&mut buf) => match read { Ok(0) | Err(_) => 0, Ok(n) => n },
                        _ = state.changed() => continue,
                    };
                    if n == 0 {
                        return;
                    }
                    let Ok(permit) = room.acquire_many(n as u32).await else { return };
                    permit.forget();
                    let at = schedule.arrival(&shape(&link), Instant::now(), n, rand::random::<f64>());
                    if tx.send((at, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        };
        let reading = tokio::spawn(async move {
            reader.await;
        });
        let counter = if up { &self.bytes_up } else { &self.bytes_down };
        let mut reset_seen = false;
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = wait_for(&mut state, State::Reset) => { reset_seen = true; break; }
            };
            let Some((at, bytes)) = next else { break };
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = wait_for(&mut state, State::Reset) => { reset_seen = true; break; }
            }
            // Held while black-holed: delivered once the link is back.
            if !until_up(&mut state).await || self.state() == State::Reset {
                reset_seen = self.state() == State::Reset;
                break;
            }
            if to.write_all(&bytes).await.is_err() {
                break;
            }
            counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            room.add_permits(bytes.len());
        }
        reading.abort();
        if reset_seen || self.state() == State::Reset {
            // No FIN first: the socket closes with RST once its reading half (in the other
            // direction's task) is gone too.
            let _ = to.as_ref().set_zero_linger();
            to.forget();
            return;
        }
        let _ = to.shutdown().await;
    }
}

/// No delay, no cap.
pub const NO_SHAPE: Shape = Shape { delay: std::time::Duration::ZERO, jitter: std::time::Duration::ZERO, rate_bits: None };

/// Closes `stream` with a reset (RST), not an orderly FIN.
fn reset(stream: TcpStream) -> std::io::Result<()> {
    stream.set_zero_linger()
}

/// Waits while the link is black-holed; false once it is reset (or the link is gone).
async fn until_up(state: &mut watch::Receiver<State>) -> bool {
    loop {
        match *state.borrow_and_update() {
            State::Up => return true,
            State::Reset => return false,
            State::Blackhole => {}
        }
        if state.changed().await.is_err() {
            return false;
        }
    }
}

/// Resolves once the link is in `wanted` (at once if it is).
async fn wait_for(state: &mut watch::Receiver<State>, wanted: State) {
    let _ = state.wait_for(|s| *s == wanted).await;
}
