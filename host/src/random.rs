//! Secrets the sans-IO core takes as inputs, drawn from the OS's random source.

use anyhow::Context;
use protocol::rollout::MapSeed;

/// A fresh seed for a rollout controller's or site guard's device maps: unpredictable to
/// devices, so ids ground for hash collisions collide in nobody's map but their own try.
pub fn map_seed() -> anyhow::Result<MapSeed> {
    let mut seed = [0u8; 16];
    getrandom::getrandom(&mut seed).context("the OS random source failed")?;
    Ok(MapSeed(seed))
}

#[cfg(test)]
mod tests {
    /// Two draws differ (a constant seed would be a guessable one).
    #[test]
    fn seeds_are_fresh() {
        assert_ne!(super::map_seed().unwrap(), super::map_seed().unwrap());
    }
}
