//! The wait after a failed background refresh of a credential (a Vault
//! token's renewal or login, an Azure token, expiring AWS credentials):
//! one policy for every backend's keeper task.

use std::time::Duration;

/// First wait after a failure; doubled per failure up to [`MAX`], each wait
/// jittered down to half.
pub const MIN: Duration = Duration::from_secs(1);
pub const MAX: Duration = Duration::from_secs(120);

/// The wait before attempt `failures + 1`: exponential, bounded, with
/// "equal jitter" (half fixed, half random) so that many plugins started
/// together do not hit a backend in step.
pub fn after_failures(failures: u32) -> Duration {
    use std::hash::BuildHasher;
    let ceiling = MIN
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX);
    // A random u64 from the std hasher's per-instance random keys.
    let random = std::collections::hash_map::RandomState::new().hash_one(failures);
    let fraction = (random % 1000) as f64 / 1000.0;
    ceiling / 2 + (ceiling / 2).mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_jittered() {
        for failures in [1, 2, 5, 30, u32::MAX] {
            let wait = after_failures(failures);
            assert!(wait >= MIN / 2 && wait <= MAX, "{wait:?}");
        }
        assert!(after_failures(1) <= MIN);
        assert!(after_failures(40) >= MAX / 2);
        let waits: std::collections::BTreeSet<_> = (0..20).map(|_| after_failures(8)).collect();
        assert!(waits.len() > 1, "jittered: {waits:?}");
    }
}
