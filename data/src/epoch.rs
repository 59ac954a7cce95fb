//! One epoch's training batches: the sample order and the augmentation, each from its
//! own random stream of `(seed, epoch)`, and a digest of both.
use super::augment::{crop_and_flip, Crop};
use super::rng::{Purpose, SplitMix};
use super::{Dataset, Samples};
use crate::config::DataConfig;
use tch::Tensor;

/// FNV-1a, 64 bits: a small, stable hash for digests of what a run did.
#[derive(Debug, Clone)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xCBF2_9CE4_8422_2325)
    }
}

impl Fnv1a {
    /// Hashes `bytes` into the state.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    /// The hash as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// This rank's share of an epoch's `order` (DistributedSampler semantics, no
/// shuffling of its own): padded by wrapping around to a multiple of `world`, then every
/// `world`-th sample from position `rank`. Every rank gets `ceil(len / world)` samples;
/// with one rank it is `order` itself.
pub fn shard(order: &[i64], rank: usize, world: usize) -> Vec<i64> {
    if world <= 1 || order.is_empty() {
        return order.to_vec();
    }
    let per_rank = order.len().div_ceil(world);
    (0..per_rank)
        .map(|i| order[(i * world + rank) % order.len()])
        .collect()
}

/// Samples each rank trains on per epoch out of `len` (see [`shard`]).
pub fn shard_len(len: usize, world: usize) -> usize {
    if world <= 1 {
        len
    } else {
        len.div_ceil(world)
    }
}

/// The training batches of one epoch, in order, augmented (CPU tensors).
pub struct EpochBatches<'a> {
    dataset: &'a Dataset,
    order: Vec<i64>,
    batch_size: usize,
    next: usize,
    /// Zero padding of the random crop and whether to flip, when augmenting.
    augmentation: Option<(i64, bool)>,
    rng: SplitMix,
    digest: Fnv1a,
}

impl<'a> EpochBatches<'a> {
    /// The batches of `epoch` (0-based) of a run with `seed`: the order from the
    /// [`Purpose::Order`] stream, crops and flips (`[data] crop_padding`, `flip`) from
    /// the [`Purpose::Augmentation`] stream.
    pub fn new(
        dataset: &'a Dataset,
        config: &DataConfig,
        batch_size: usize,
        seed: u64,
        epoch: u32,
    ) -> Self {
        let order =
            SplitMix::stream(seed, Purpose::Order, epoch).permutation(dataset.len() as usize);
        let mut digest = Fnv1a::default();
        for i in &order {
            digest.write(&i.to_le_bytes());
        }
        Self {
            dataset,
            order,
            batch_size: batch_size.max(1),
            next: 0,
            augmentation: (config.crop_padding > 0 || config.flip)
                .then_some((config.crop_padding.max(0), config.flip)),
            rng: SplitMix::stream(seed, Purpose::Augmentation, epoch),
            digest,
        }
    }

    /// Keeps this rank's share of the epoch (see [`shard`]:
    /// DistributedSampler semantics, padded by wrapping). Rank 0 keeps the single-process
    /// augmentation stream; every other rank draws its crops from a stream of its own.
    /// The digest stays that of the whole epoch's order (plus this rank's crops). With one
    /// rank nothing changes.
    pub fn shard(mut self, rank: usize, world: usize) -> Self {
        if world > 1 {
            self.order = shard(&self.order, rank, world);
            if rank > 0 {
                let base = self.rng.next_u64();
                self.rng = SplitMix::new(base, 0xD15C_0000 + rank as u64);
            }
        }
        self
    }

    /// Batches per epoch.
    pub fn batch_count(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// The digest of the sample order and of the augmentation of the batches handed out
    /// so far (all of them at the end of the epoch), as 16 hex digits.
    pub fn digest(&self) -> String {
        self.digest.hex()
    }

    fn record(&mut self, crops: &[Crop]) {
        for c in crops {
            self.digest.write(&c.bytes());
        }
    }
}

impl Iterator for EpochBatches<'_> {
    type Item = Samples;

    fn next(&mut self) -> Option<Samples> {
        if self.next >= self.order.len() {
            return None;
        }
        let end = (self.next + self.batch_size).min(self.order.len());
        let index = Tensor::from_slice(&self.order[self.next..end]);
        self.next = end;
        let samples = self.dataset.select(&index);
        let Some((padding, flip)) = self.augmentation else {
            return Some(samples);
        };
        let (samples, crops) = crop_and_flip(&samples, padding, flip, &mut self.rng);
        self.record(&crops);
        Some(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        super::super::shapes::generate(10, 16, 2, 1, 0).unwrap()
    }

    #[test]
    fn fnv1a_has_its_reference_values() {
        let hash = |b: &[u8]| {
            let mut h = Fnv1a::default();
            h.write(b);
            h.hex()
        };
        assert_eq!(hash(b""), "cbf29ce484222325");
        assert_eq!(hash(b"a"), "af63dc4c8601ec8c");
        assert_eq!(hash(b"foobar"), "85944171f73967e8");
    }

    #[test]
    fn batches_cover_the_epoch_and_the_digest_depends_on_seed_and_epoch() {
        let data = tiny();
        let config = DataConfig::default();
        let digest = |seed, epoch| {
            let mut batches = EpochBatches::new(&data, &config, 4, seed, epoch);
            assert_eq!(batches.batch_count(), 3);
            let sizes: Vec<i64> = batches.by_ref().map(|s| s.labels.size()[0]).collect();
            assert_eq!(sizes, [4, 4, 2]);
            batches.digest()
        };
        assert_eq!(digest(3, 1), digest(3, 1));
        assert_ne!(digest(3, 1), digest(3, 2));
        assert_ne!(digest(3, 1), digest(4, 1));
        // The crops count: without augmentation the digest is the order's alone.
        let plain = DataConfig {
            crop_padding: 0,
            flip: false,
            ..DataConfig::default()
        };
        let mut batches = EpochBatches::new(&data, &plain, 4, 3, 1);
        let before = batches.digest();
        batches.by_ref().for_each(drop);
        assert_eq!(batches.digest(), before);
        assert_ne!(before, digest(3, 1));
    }
}
