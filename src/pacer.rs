//! A documents-per-second ceiling (governor) that takes requests of any size: governor
//! refuses a request larger than its burst, so large ones are taken in burst-sized parts.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub struct Pacer {
    limiter: DefaultDirectRateLimiter,
    burst: NonZeroU32,
}

impl Pacer {
    /// `None` when `per_second` is 0 (no ceiling).
    pub fn per_second(per_second: u32) -> Option<Pacer> {
        let rate = NonZeroU32::new(per_second)?;
        Some(Pacer { limiter: RateLimiter::direct(Quota::per_second(rate)), burst: rate })
    }

    /// Waits until `n` more units may go.
    pub async fn take(&self, n: u64) {
        let mut left = n;
        while left > 0 {
            let step = left.min(u64::from(self.burst.get())) as u32;
            if let Some(step) = NonZeroU32::new(step) {
                // Cannot fail: step never exceeds the burst.
                let _ = self.limiter.until_n_ready(step).await;
            }
            left -= u64::from(step);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_larger_than_the_burst_wait_instead_of_failing() {
        let pacer = Pacer::per_second(50).unwrap();
        let started = std::time::Instant::now();
        pacer.take(120).await; // 50 at once, then 70 more at 50/s
        assert!(started.elapsed() >= std::time::Duration::from_millis(1300), "{:?}", started.elapsed());
        assert!(Pacer::per_second(0).is_none());
    }
}
