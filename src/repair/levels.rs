//! Which levels a repair's comparison visits: the finest a scan keeps and the coarsest it
//! starts at, by the collection's size, and how far down each next comparison goes, from
//! what the last one found (a level costs a round trip of the link). Pure: no I/O.

/// Bits between one level and the next: each chunk splits into about 4. (With 16 a level
/// the lists sent for scattered differences were four times larger: at 1 % of a million
/// documents changed, a difference cost ~1.7 KB across the link with chunks of 16.)
pub const LEVEL_STEP: u32 = 2;

/// The finest level kept in memory for a collection of `count` documents: 4 documents a
/// chunk, coarser for very large collections so a side holds at most about 4 million chunks.
pub fn fine_bits(count: u64) -> u32 {
    let mut bits = LEVEL_STEP;
    while bits < 60 && (count >> bits) > (1 << 22) {
        bits += LEVEL_STEP;
    }
    bits
}

/// The level the comparison starts at: at most about 1,024 chunks (one round trip of a
/// few tens of kilobytes), never finer than `fine_bits`.
pub fn top_bits(count: u64) -> u32 {
    let mut bits = fine_bits(count);
    while bits < 60 && (count >> bits) > 1024 {
        bits += LEVEL_STEP;
    }
    bits
}

/// A level is skipped when that makes the comparison ask at most this many chunks more
/// (a hundred kilobytes or so, compressed: less than a cross-region round trip at
/// 100 Mbit/s)...
pub const FEW_MORE_CHUNKS: usize = 4096;

/// ... or at most half again as many as asking it would (at 1 % of a million documents
/// differing, skipping the second level costs 4,900 chunks more than the 9,900 asked
/// otherwise, and saves a round trip of about a tenth of the repair's time).
const MORE_SHARE: f64 = 0.5;

/// How many levels down the next comparison goes after one that compared `pieces` and
/// found `differing`; `left` counts the levels below plus the document lists (`left`
/// itself: straight to the lists). Each level costs a round trip of the link; skipping one
/// makes the level after it ask for 4 times as many chunks of every differing span where
/// asking it would have split only those of its pieces that differ. So a level is skipped
/// when that adds few chunks (`FEW_MORE_CHUNKS`, `MORE_SHARE`), guessing the share of its
/// pieces that would differ from the differences taken as scattered at random (which the
/// hashed boundaries make them; clustered ones only make the guess pessimistic).
pub fn steps_down(pieces: usize, differing: usize, left: u32) -> u32 {
    if differing == 0 || pieces == 0 {
        return 1;
    }
    // Differences per piece, from the share that differed (a Poisson guess; all differing
    // says only "many", so the share is held just below one).
    let share = (differing as f64 / pieces as f64).min(1.0 - 0.5 / pieces as f64);
    let per_piece = -(1.0 - share).ln();
    let mut steps = 1;
    while steps < left {
        // Asking the level `steps` down, then the next for its differing pieces, against
        // asking the next at once.
        let asked = differing as f64 * 4f64.powi(steps as i32);
        let skipped_share = 1.0 - (-per_piece / 4f64.powi(steps as i32)).exp();
        let more = asked * (3.0 - 4.0 * skipped_share);
        let otherwise = asked * (1.0 + 4.0 * skipped_share);
        if more <= FEW_MORE_CHUNKS as f64 || more <= MORE_SHARE * otherwise {
            steps += 1;
        } else {
            break;
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_skipped_where_that_costs_few_chunks_more() {
        // 1 % of a million: every top chunk differs, so the next level is skipped.
        assert_eq!(steps_down(1000, 1000, 5), 2);
        // Half the pieces differ: the next level splits them, one step.
        assert_eq!(steps_down(16_000, 7_400, 3), 1);
        // What 1 % of a million documents showed at the top level (some clustered).
        assert_eq!(steps_down(1044, 924, 5), 2);
        // A hundred scattered differences: small lists, levels two at a time.
        assert_eq!(steps_down(1000, 100, 5), 2);
        assert_eq!(steps_down(1600, 100, 3), 2);
        // Very few: straight to the document lists.
        assert_eq!(steps_down(1000, 3, 5), 5);
        assert_eq!(steps_down(1000, 72, 5), 3);
        assert_eq!(steps_down(1000, 0, 5), 1);
        assert_eq!(steps_down(1000, 1000, 1), 1);
    }

    #[test]
    fn levels_grow_with_the_collection() {
        assert_eq!(fine_bits(1_000_000), 2);
        assert_eq!(top_bits(1_000_000), 10);
        assert_eq!(top_bits(100), 2);
        assert!(fine_bits(1 << 40) > 2);
        assert_eq!((top_bits(1 << 40) - fine_bits(1 << 40)) % LEVEL_STEP, 0);
    }
}
