//! How many bytes a reader may have handed to Kafka and not yet seen acknowledged: as many
//! as the path to the broker drains in a quarter of the delivery timeout, at the rate it
//! acknowledged lately (pure; no I/O).
//!
//! Why: a record not acknowledged within the producer's delivery timeout (0.4 of the lease)
//! fails, and the reader restarts and sends everything after its saved token again. A fixed
//! bound in events does not know the link: 20,000 documents of 4 KB are 80 MB, 6.5 s at
//! 100 Mbit/s, so across a 100 Mbit/s link the records at the back of librdkafka's queue
//! timed out again and again (scripts/bench.sh's text rows: the source sent each document
//! 2.7 times and the catch-up ran at 711 docs/s, a quarter of what the link carries).

use std::time::{Duration, Instant};

/// The window before anything was acknowledged, and its floor: what even a 1 Mbit/s link
/// drains well within the delivery timeout.
pub const MIN_WINDOW: usize = 128 * 1024;
/// The ceiling: librdkafka's own queue bound (`queue.buffering.max.kbytes`).
pub const MAX_WINDOW: usize = 64 * 1024 * 1024;
/// How often the acknowledged rate is measured.
const SAMPLE: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct SendWindow {
    /// The time the queue may take to drain: a quarter of the delivery timeout.
    drain_time: Duration,
    window: usize,
    acked: usize,
    since: Instant,
}

impl SendWindow {
    pub fn new(delivery_timeout: Duration, now: Instant) -> SendWindow {
        SendWindow { drain_time: delivery_timeout / 4, window: MIN_WINDOW, acked: 0, since: now }
    }

    /// Kafka acknowledged `bytes` more.
    pub fn acked(&mut self, bytes: usize, now: Instant) {
        self.acked += bytes;
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < SAMPLE {
            return;
        }
        // Nothing acknowledged in a sample says nothing of the link (an idle stream): the
        // window stays as it was.
        if self.acked > 0 {
            let rate = self.acked as f64 / elapsed.as_secs_f64();
            self.window = ((rate * self.drain_time.as_secs_f64()) as usize).clamp(MIN_WINDOW, MAX_WINDOW);
        }
        self.acked = 0;
        self.since = now;
    }

    /// Whether more may be sent with `due_bytes` not yet acknowledged.
    pub fn allows(&self, due_bytes: usize) -> bool {
        due_bytes < self.window
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(4800);

    /// Acknowledges `rate` bytes/s for `secs` seconds in 50 ms steps; the time it ended.
    fn run(w: &mut SendWindow, start: Instant, rate: usize, secs: f64) -> Instant {
        let steps = (secs / 0.05) as u32;
        for i in 1..=steps {
            w.acked(rate / 20, start + Duration::from_millis(50) * i);
        }
        start + Duration::from_millis(50) * steps
    }

    #[test]
    fn starts_small_and_follows_the_acknowledged_rate() {
        let t0 = Instant::now();
        let mut w = SendWindow::new(TIMEOUT, t0);
        assert_eq!(w.bytes(), MIN_WINDOW);
        assert!(w.allows(MIN_WINDOW - 1) && !w.allows(MIN_WINDOW));
        // 12.5 MB/s (100 Mbit/s): a quarter of 4.8 s of it.
        let t1 = run(&mut w, t0, 12_500_000, 2.0);
        assert!((14_000_000..16_000_000).contains(&w.bytes()), "{}", w.bytes());
        // The link slows to 125 kB/s (1 Mbit/s): the window comes down with it...
        let t2 = run(&mut w, t1, 125_000, 1.0);
        assert!((140_000..160_000).contains(&w.bytes()), "{}", w.bytes());
        // ... but never below the floor.
        run(&mut w, t2, 10_000, 1.0);
        assert_eq!(w.bytes(), MIN_WINDOW);
    }

    #[test]
    fn an_idle_stream_keeps_its_window_and_a_fast_path_is_capped() {
        let t0 = Instant::now();
        let mut w = SendWindow::new(TIMEOUT, t0);
        let t1 = run(&mut w, t0, 12_500_000, 1.0);
        let before = w.bytes();
        run(&mut w, t1, 0, 3.0);
        assert_eq!(w.bytes(), before);
        run(&mut w, t1 + Duration::from_secs(3), 1_000_000_000, 1.0);
        assert_eq!(w.bytes(), MAX_WINDOW);
    }
}
