//! What a reader shows of its progress: counters and lag on `/metrics` and the status
//! board, once per tick rather than per event.

use bson::Timestamp;

use super::reader::{Phase, Published, Reader};
use crate::metrics as m;

impl Reader {
    /// Publishes counters to metrics and the status board (once per tick, not per event).
    /// The lag is the reader's, so every collection of a database reader shows it.
    pub(super) fn show_progress(&self, phase: Phase, published: &mut Published, event_time: Option<Timestamp>, caught_up: bool) {
        let copying = matches!(phase, Phase::Copy { .. });
        for (route, n) in published.0.values_mut().filter(|(_, n)| *n > 0) {
            let sent = std::mem::take(n);
            metrics::counter!(m::SOURCE_EVENTS_PUBLISHED, "collection" => route.ns.clone()).increment(sent);
            self.ctx.board.update_collection(&route.ns, |c| {
                c.events_published += sent;
                if copying {
                    c.copied += sent;
                } else {
                    c.last_event_time = event_time.map(|t| t.time).or(c.last_event_time);
                }
            });
        }
        let lag = if caught_up { Some(0.0) } else { event_time.map(|t| m::seconds_since(t.time)) };
        if let Some(lag) = lag {
            for route in self.members() {
                metrics::gauge!(m::SOURCE_LAG_SECONDS, "collection" => route.ns.clone()).set(lag);
            }
        }
        if !copying {
            self.show(|c| c.lag_seconds = lag);
        }
    }
}
