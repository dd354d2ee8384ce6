//! Exponential backoff with jitter, the one policy behind every retry loop (agent
//! reconnects, the CLI finding a new leader, engine calls the deploy retries).

use std::time::Duration;

use rand::Rng;

/// Delays that double from `min` up to `max`, each with up to half again of random
/// jitter so that many clients retrying at once spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff whose first delay is `min` and whose delays never exceed `max` (plus jitter).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), next: min }
    }

    /// The delay to wait now (with jitter); the next one is twice as long, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = u64::try_from(base.as_millis() / 2).unwrap_or(u64::MAX);
        base + Duration::from_millis(rand::rng().random_range(0..=half))
    }

    /// Sleeps for [`next_delay`](Self::next_delay).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Starts over from `min` (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_at_most_half_of_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let bases = [100, 200, 400, 500, 500];
        for base in bases {
            let d = b.next_delay().as_millis() as u64;
            assert!((base..=base + base / 2).contains(&d), "{d} not within {base}..{}", base + base / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(150));
    }
}
