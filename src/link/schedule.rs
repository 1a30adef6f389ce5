//! When the bytes crossing one direction of an emulated link arrive at the far end: they
//! wait for the wire (a bandwidth cap serializes them), then travel the one-way delay
//! plus a jitter, and never overtake bytes sent before them (TCP delivers in order).
//! Pure arithmetic, no I/O.

use std::time::Duration;

use tokio::time::Instant;

/// The setting of one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// One-way delay.
    pub delay: Duration,
    /// Up to this much more delay, drawn per chunk.
    pub jitter: Duration,
    /// Bits per second; `None`: no cap.
    pub rate_bits: Option<u64>,
}

impl Shape {
    /// What one direction may hold in flight: about one bandwidth-delay product (so a
    /// sender meets a real link's back-pressure, not an endless buffer), at least 64 KiB.
    pub fn queue_bytes(&self) -> usize {
        let bdp = match self.rate_bits {
            Some(bits) => (bits as f64 / 8.0 * (self.delay + self.jitter).as_secs_f64()) as usize,
            None => 4 * 1024 * 1024,
        };
        bdp.max(64 * 1024)
    }
}

/// One direction's clock.
#[derive(Debug, Default)]
pub struct Schedule {
    wire_free_at: Option<Instant>,
    last_arrival: Option<Instant>,
}

impl Schedule {
    /// When `bytes` read at `now` arrive; `jitter_draw` in [0, 1) picks the jitter.
    pub fn arrival(&mut self, shape: &Shape, now: Instant, bytes: usize, jitter_draw: f64) -> Instant {
        let start = self.wire_free_at.map_or(now, |free| free.max(now));
        let on_wire = match shape.rate_bits {
            Some(bits) if bits > 0 => Duration::from_secs_f64(bytes as f64 * 8.0 / bits as f64),
            _ => Duration::ZERO,
        };
        let sent = start + on_wire;
        self.wire_free_at = Some(sent);
        let arrival = sent + shape.delay + shape.jitter.mul_f64(jitter_draw.clamp(0.0, 1.0));
        let arrival = self.last_arrival.map_or(arrival, |last| last.max(arrival));
        self.last_arrival = Some(arrival);
        arrival
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bytes_wait_for_the_wire_then_travel_the_delay() {
        let shape = Shape { delay: 50 * MS, jitter: Duration::ZERO, rate_bits: Some(8_000_000) };
        let mut s = Schedule::default();
        let t0 = Instant::now();
        // 100 KB at 1 MB/s: 100 ms on the wire, then 50 ms of delay.
        assert_eq!(s.arrival(&shape, t0, 100_000, 0.0), t0 + 150 * MS);
        // Sent at once after it: waits for the wire to be free.
        assert_eq!(s.arrival(&shape, t0, 100_000, 0.0), t0 + 250 * MS);
        // Read after the wire went idle: its own time.
        assert_eq!(s.arrival(&shape, t0 + 1000 * MS, 1_000, 0.0), t0 + 1051 * MS);
    }

    #[test]
    fn jitter_never_reorders() {
        let shape = Shape { delay: 10 * MS, jitter: 100 * MS, rate_bits: None };
        let mut s = Schedule::default();
        let t0 = Instant::now();
        let first = s.arrival(&shape, t0, 10, 0.9);
        let second = s.arrival(&shape, t0 + MS, 10, 0.0);
        assert_eq!(first, t0 + 100 * MS);
        assert_eq!(second, first, "a later chunk with less jitter waits for the earlier one");
    }

    #[test]
    fn the_queue_is_one_bandwidth_delay_product() {
        let shape = Shape { delay: 75 * MS, jitter: Duration::ZERO, rate_bits: Some(100_000_000) };
        assert_eq!(shape.queue_bytes(), 937_500);
        assert_eq!(Shape { rate_bits: Some(1_000_000), ..shape }.queue_bytes(), 64 * 1024);
    }
}
