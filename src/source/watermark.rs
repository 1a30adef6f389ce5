//! Which resume token may be saved: the token of the last event in the unbroken prefix of
//! events Kafka has acknowledged. Delivery reports arrive out of order, so a token never
//! passes an event still in flight (pure; no I/O).

use std::collections::VecDeque;

/// Tracks sent events by sequence number and the resume token each one carries.
#[derive(Debug)]
pub struct AckWatermark<T> {
    /// Sequence number of the oldest event still tracked (everything before is acknowledged).
    first_seq: u64,
    /// Events from `first_seq` on: their token (if any) and whether Kafka acknowledged them.
    pending: VecDeque<(Option<T>, bool)>,
    /// The newest token covered by the acknowledged prefix: safe to save.
    safe: Option<T>,
    /// A newer token with no event of its own (a post-batch resume token on an idle
    /// stream); it becomes safe once every event sent before it is acknowledged.
    idle: Option<(u64, T)>,
}

impl<T: Clone> Default for AckWatermark<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> AckWatermark<T> {
    pub fn new() -> Self {
        AckWatermark { first_seq: 0, pending: VecDeque::new(), safe: None, idle: None }
    }

    /// Records an event handed to the producer; returns its sequence number.
    pub fn sent(&mut self, token: Option<T>) -> u64 {
        let seq = self.first_seq + self.pending.len() as u64;
        self.pending.push_back((token, false));
        seq
    }

    /// Records a token that covers everything sent so far (the stream's post-batch token).
    pub fn idle_token(&mut self, token: T) {
        let next_seq = self.first_seq + self.pending.len() as u64;
        self.idle = Some((next_seq, token));
        self.advance();
    }

    /// Records Kafka's acknowledgement of event `seq`.
    pub fn acked(&mut self, seq: u64) {
        if seq < self.first_seq {
            return;
        }
        if let Some(entry) = self.pending.get_mut((seq - self.first_seq) as usize) {
            entry.1 = true;
        }
        self.advance();
    }

    fn advance(&mut self) {
        while let Some((_, true)) = self.pending.front() {
            if let Some((token, _)) = self.pending.pop_front() {
                if token.is_some() {
                    self.safe = token;
                }
            }
            self.first_seq += 1;
        }
        if let Some((at, _)) = &self.idle {
            if *at <= self.first_seq {
                self.safe = self.idle.take().map(|(_, t)| t);
            }
        }
    }

    /// The newest token that may be saved, if any.
    pub fn safe_token(&self) -> Option<&T> {
        self.safe.as_ref()
    }

    /// Events sent but not yet acknowledged (or acknowledged behind a gap).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn token_waits_for_the_gap() {
        let mut w = AckWatermark::new();
        let a = w.sent(Some("a"));
        let b = w.sent(Some("b"));
        let c = w.sent(Some("c"));
        w.acked(c);
        w.acked(b);
        assert_eq!(w.safe_token(), None, "a is still in flight");
        w.acked(a);
        assert_eq!(w.safe_token(), Some(&"c"));
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn idle_token_needs_everything_before_it() {
        let mut w = AckWatermark::new();
        let a = w.sent(Some("a"));
        w.idle_token("post-batch");
        assert_eq!(w.safe_token(), None);
        w.acked(a);
        assert_eq!(w.safe_token(), Some(&"post-batch"));
        w.idle_token("later");
        assert_eq!(w.safe_token(), Some(&"later"));
    }

    #[test]
    fn events_without_tokens_do_not_reset_safe() {
        let mut w = AckWatermark::new();
        let a = w.sent(Some(1));
        let b = w.sent(None);
        w.acked(a);
        w.acked(b);
        assert_eq!(w.safe_token(), Some(&1));
    }

    proptest! {
        /// Whatever order acknowledgements arrive in, the safe token is always the token of
        /// the last event of an acknowledged prefix.
        #[test]
        fn safe_token_never_passes_an_unacked_event(order in Just((0u64..40).collect::<Vec<_>>()).prop_shuffle()) {
            let mut w = AckWatermark::new();
            for i in 0..40u64 { w.sent(Some(i)); }
            let mut acked = std::collections::HashSet::new();
            for seq in order {
                w.acked(seq);
                acked.insert(seq);
                if let Some(&t) = w.safe_token() {
                    prop_assert!((0..=t).all(|s| acked.contains(&s)));
                    prop_assert!(!acked.contains(&(t + 1)) || t == 39 || w.in_flight() > 0);
                }
            }
            prop_assert_eq!(w.safe_token(), Some(&39));
        }
    }
}
