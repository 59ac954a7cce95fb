//! A small seeded generator (SplitMix64) for data generation, order and augmentation:
//! identical streams on every platform, independent of libtorch's generator; and the
//! run's random streams, one per [`Purpose`] and epoch.

/// What a random stream of a run is for. Each purpose draws from its own stream of
/// `(seed, purpose, epoch)`, so a draw for one purpose never shifts another's: two runs
/// with one seed see the same batches and crops whatever their training mode, and differ
/// only where their modes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The order of the training samples in an epoch.
    Order,
    /// Random crops and flips of the training samples.
    Augmentation,
    /// The model's initial weights (libtorch's generator, seeded before it is built).
    Initialisation,
    /// The training pipeline's own draws: the mixing coin and the saliency source of a
    /// batch.
    Draws,
    /// libtorch's global generator during an epoch: what attacks and saliency sources
    /// draw inside plugins (random starts, noise).
    Attacks,
}

impl Purpose {
    /// A constant per purpose that decorrelates the streams of one seed.
    fn key(self) -> u64 {
        match self {
            Purpose::Order => 0x0D0E_5A17_0000_0001,
            Purpose::Augmentation => 0x0D0E_5A17_0000_0002,
            Purpose::Initialisation => 0x0D0E_5A17_0000_0003,
            Purpose::Draws => 0x0D0E_5A17_0000_0004,
            Purpose::Attacks => 0x0D0E_5A17_0000_0005,
        }
    }
}

/// A seed for libtorch's global generator (`tch::manual_seed`) from the stream of
/// `purpose` in `epoch` of a run with `seed`.
pub fn torch_seed(seed: u64, purpose: Purpose, epoch: u32) -> i64 {
    (SplitMix::stream(seed, purpose, epoch).next_u64() >> 1) as i64
}

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator for `seed`, decorrelated per `stream` (e.g. split, epoch).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut g = Self(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        g.next_u64();
        g
    }
    /// The stream for `purpose` in `epoch` of a run with `seed`.
    pub fn stream(seed: u64, purpose: Purpose, epoch: u32) -> Self {
        let base = Self::new(seed, purpose.key()).next_u64();
        Self::new(base, epoch as u64)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Uniform integer in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// A uniformly random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut v: Vec<i64> = (0..n as i64).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_streams_and_valid_permutations() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut g = SplitMix::new(1, 2);
                move |_| g.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut g = SplitMix::new(1, 2);
                move |_| g.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..4)
            .map({
                let mut g = SplitMix::new(1, 3);
                move |_| g.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut p = SplitMix::new(5, 0).permutation(100);
        assert_ne!(p, (0..100).collect::<Vec<i64>>());
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<i64>>());
        let mut g = SplitMix::new(9, 9);
        assert!((0..1000).all(|_| g.below(7) < 7));
    }

    #[test]
    fn every_purpose_and_epoch_has_its_own_stream() {
        let purposes = [
            Purpose::Order,
            Purpose::Augmentation,
            Purpose::Initialisation,
            Purpose::Draws,
            Purpose::Attacks,
        ];
        let mut firsts = std::collections::BTreeSet::new();
        for seed in 0..3 {
            for p in purposes {
                for epoch in 0..4 {
                    let first = SplitMix::stream(seed, p, epoch).next_u64();
                    assert_eq!(first, SplitMix::stream(seed, p, epoch).next_u64());
                    firsts.insert(first);
                }
            }
        }
        assert_eq!(
            firsts.len(),
            3 * purposes.len() * 4,
            "no two streams coincide"
        );
        assert!(torch_seed(1, Purpose::Attacks, 2) >= 0);
    }
}
