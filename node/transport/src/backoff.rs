//! Exponential backoff with jitter, for the async retry loops: the client's failover between
//! nodes, a node's peer reconnects, and joining through seeds.
//!
//! Jitter spreads the retries of many clients or nodes that failed at the same moment (a node
//! restart drops every peer link at once), so they do not come back in lockstep. The sans-IO
//! core has its own backoffs (hinted handoff, transfers): they draw from the core's seeded RNG in
//! virtual time and do not use this type.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with "equal jitter".
///
/// Attempt `k` (counting from 0) has the ceiling `c = min(max, min * 2^k)` and waits a uniformly
/// random time in `[c / 2, c]`. So `min` is the ceiling of the first delay, each later ceiling
/// doubles, and `max` bounds every delay; no delay is shorter than half of `min` (unless
/// `max < min`, when every ceiling is `max`). [`Backoff::reset`] starts over after a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff whose first delay is at most `min` and whose delays never exceed `max`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    /// How many delays were handed out since the start or the last [`Backoff::reset`].
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The longest the next delay can be: `min(max, min * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay, drawn uniformly from `[ceiling / 2, ceiling]`, and one more attempt.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        rng.gen_range(ceiling / 2..=ceiling)
    }

    /// Starts over: the next delay is at most `min` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_from_min_up_to_max() {
        let mut b = Backoff::new(ms(50), ms(2_000));
        let ceilings: Vec<_> = (0..10)
            .map(|_| {
                let c = b.ceiling();
                b.next_delay(&mut ChaCha8Rng::seed_from_u64(1));
                c
            })
            .collect();
        let expected = [50, 100, 200, 400, 800, 1_600, 2_000, 2_000, 2_000, 2_000].map(ms);
        assert_eq!(ceilings, expected);
    }

    #[test]
    fn reset_starts_over() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut b = Backoff::new(ms(20), ms(500));
        for _ in 0..20 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), ms(500));
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.ceiling(), ms(20));
        let d = b.next_delay(&mut rng);
        assert!((ms(10)..=ms(20)).contains(&d), "{d:?}");
    }

    #[test]
    fn delays_are_jittered() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut b = Backoff::new(ms(1_000), ms(1_000));
        let delays: std::collections::BTreeSet<_> =
            (0..50).map(|_| b.next_delay(&mut rng)).collect();
        assert!(delays.len() > 40, "only {} distinct delays", delays.len());
    }

    #[test]
    fn huge_attempt_counts_stay_at_max() {
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 4), ms(5_000));
        b.attempt = u32::MAX - 1;
        assert_eq!(b.ceiling(), ms(5_000));
        b.next_delay(&mut ChaCha8Rng::seed_from_u64(0));
        b.next_delay(&mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(b.attempt(), u32::MAX);
        assert_eq!(b.ceiling(), ms(5_000));
    }

    proptest! {
        /// Every delay lies in [ceiling/2, ceiling]; ceilings start at min (or max), double,
        /// and never pass max.
        #[test]
        fn delays_stay_within_bounds(
            min_ms in 0u64..10_000,
            max_ms in 0u64..60_000,
            seed in any::<u64>(),
            attempts in 1usize..80,
        ) {
            let (min, max) = (ms(min_ms), ms(max_ms));
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut b = Backoff::new(min, max);
            prop_assert_eq!(b.ceiling(), min.min(max));
            let mut previous: Option<Duration> = None;
            for _ in 0..attempts {
                let ceiling = b.ceiling();
                prop_assert!(ceiling <= max);
                if let Some(p) = previous {
                    prop_assert_eq!(ceiling, (p * 2).min(max));
                }
                let d = b.next_delay(&mut rng);
                prop_assert!(d >= ceiling / 2 && d <= ceiling, "{:?} not in [{:?}/2, {:?}]", d, ceiling, ceiling);
                previous = Some(ceiling);
            }
            b.reset();
            let d = b.next_delay(&mut rng);
            prop_assert!(d <= min.min(max));
        }
    }
}
