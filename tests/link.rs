//! The WAN link emulator on loopback: its delay and bandwidth within 10 % of the setting,
//! a reset cut resets connections and refuses new ones, a black-hole cut holds them
//! silent, and both restore. No servers but the test's own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use docrepl::link::{Link, Shape, Shapes, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

/// An echo server on a free loopback port.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn link_to(to: SocketAddr, shape: Shape) -> Arc<Link> {
    Link::start("127.0.0.1:0".parse().unwrap(), to, Shapes { up: shape, down: shape }).await.unwrap()
}

fn shape(delay_ms: u64, rate_mbit: Option<u64>) -> Shape {
    Shape { delay: Duration::from_millis(delay_ms), jitter: Duration::ZERO, rate_bits: rate_mbit.map(|m| m * 1_000_000) }
}

async fn ping(s: &mut TcpStream) -> Duration {
    let started = Instant::now();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_round_trip_is_twice_the_delay() {
    let link = link_to(echo_server().await, shape(50, None)).await;
    let mut s = TcpStream::connect(link.local_addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut rtts = Vec::new();
    for _ in 0..15 {
        rtts.push(ping(&mut s).await);
    }
    rtts.sort();
    let median = rtts[rtts.len() / 2];
    assert!(median >= Duration::from_millis(90) && median <= Duration::from_millis(110), "median round trip {median:?} for 2 x 50 ms (all: {rtts:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_takes_the_bandwidth_it_is_given() {
    // A server that counts what arrives, and says when 5 MB are in.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    const TOTAL: usize = 5_000_000;
    let received = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < TOTAL {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {got} bytes");
            got += n;
        }
        Instant::now()
    });
    // 20 Mbit/s = 2.5 MB/s: 5 MB take 2 s (plus 5 ms of delay).
    let link = link_to(server, shape(5, Some(20))).await;
    let mut s = TcpStream::connect(link.local_addr).await.unwrap();
    let started = Instant::now();
    let chunk = vec![7u8; 100_000];
    for _ in 0..TOTAL / chunk.len() {
        s.write_all(&chunk).await.unwrap();
    }
    let took = timeout(Duration::from_secs(10), received).await.unwrap().unwrap() - started;
    assert!(took >= Duration::from_millis(1800) && took <= Duration::from_millis(2200), "5 MB at 20 Mbit/s took {took:?} (2.0 s expected)");
    assert_eq!(link.stats().bytes_up, TOTAL as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_cut_resets_and_refuses_until_restored() {
    let link = link_to(echo_server().await, shape(1, None)).await;
    let mut s = TcpStream::connect(link.local_addr).await.unwrap();
    ping(&mut s).await;
    link.set_state(State::Reset);
    let mut b = [0u8; 1];
    let read = timeout(Duration::from_secs(2), s.read(&mut b)).await.expect("the cut must end the connection at once");
    assert!(matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset), "expected a reset, got {read:?}");
    // A new connection is reset at once (while connecting, or at its first read).
    if let Ok(mut again) = TcpStream::connect(link.local_addr).await {
        let read = timeout(Duration::from_secs(2), again.read(&mut b)).await.expect("refused at once");
        assert!(matches!(&read, Err(_) | Ok(0)), "expected a refusal, got {read:?}");
    }
    link.set_state(State::Up);
    let mut back = TcpStream::connect(link.local_addr).await.unwrap();
    ping(&mut back).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_holds_connections_silent_and_restores_them() {
    let link = link_to(echo_server().await, shape(1, None)).await;
    let mut s = TcpStream::connect(link.local_addr).await.unwrap();
    ping(&mut s).await;
    link.set_state(State::Blackhole);
    s.write_all(b"y").await.unwrap();
    let mut b = [0u8; 1];
    assert!(timeout(Duration::from_secs(1), s.read(&mut b)).await.is_err(), "nothing crosses a black hole, and nothing is reset");
    // A connection made meanwhile is accepted and hangs too.
    let mut during = TcpStream::connect(link.local_addr).await.unwrap();
    during.write_all(b"z").await.unwrap();
    assert!(timeout(Duration::from_millis(500), during.read(&mut b)).await.is_err());
    link.set_state(State::Up);
    timeout(Duration::from_secs(2), s.read_exact(&mut b)).await.expect("held bytes cross once restored").unwrap();
    assert_eq!(&b, b"y");
    timeout(Duration::from_secs(2), during.read_exact(&mut b)).await.expect("the held connection is relayed").unwrap();
    assert_eq!(&b, b"z");
    assert_eq!(link.stats().state, State::Up);
}

/// `docrepl link` on the command line, driven through its control endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_command_is_driven_over_http() {
    timeout(Duration::from_secs(60), drive_the_link_command()).await.expect("the link command test took over 60 s");
}

async fn drive_the_link_command() {
    // The child is killed when this guard goes, even after a failed assertion.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let far = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("link.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_docrepl"))
        .args(["link", "--listen", "127.0.0.1:0", "--to", &far.to_string(), "--delay-ms", "20", "--control", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(Kill)
        .unwrap();
    // The first `127.0.0.1:<port>` after each marker (the log may carry colour codes).
    let address_after = |marker: &str| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let rest = text.split(marker).nth(1)?.split("127.0.0.1:").nth(1)?;
        let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
        (!port.is_empty()).then(|| format!("127.0.0.1:{port}"))
    };
    let mut addrs = None;
    for _ in 0..100 {
        if let (Some(listen), Some(control)) = (address_after("link up"), address_after("link control on")) {
            addrs = Some((listen, control));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (listen, control) = addrs.unwrap_or_else(|| panic!("no addresses in the log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    let request = |method: &'static str, path: &'static str| {
        let control = control.clone();
        async move {
            let mut s = TcpStream::connect(&control).await.unwrap();
            s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let mut s = TcpStream::connect(&listen).await.unwrap();
    assert!(ping(&mut s).await >= Duration::from_millis(36));
    assert!(request("POST", "/cut/blackhole").await.contains("\"blackhole\""));
    s.write_all(b"q").await.unwrap();
    let mut b = [0u8; 1];
    assert!(timeout(Duration::from_millis(500), s.read(&mut b)).await.is_err());
    assert!(request("POST", "/restore").await.contains("\"up\""));
    timeout(Duration::from_secs(2), s.read_exact(&mut b)).await.unwrap().unwrap();
    let stats = request("GET", "/stats").await;
    assert!(stats.contains("\"bytes_up\":2") && stats.contains("\"connections\":1"), "{stats}");
    drop(child);
}
