//! A packed dataset read as a stream ([`ShardSource`]): the epoch's order, this rank's
//! share of it, and batches read, decoded and augmented by worker threads.
//!
//! - **Order**: a pure function of `(seed, epoch)`. The shards are grouped into blocks
//!   of `[data] shuffle_block` consecutive shards; the blocks are permuted, then the
//!   samples inside each block. So a rank reads a few shards at a time, and the order is
//!   the same whatever the number of ranks or workers.
//! - **Ranks**: the order is split at the sample level after permuting, as the in-memory
//!   path does (`DistributedSampler`: padded by wrapping, every `W`-th sample), so every
//!   rank has the same number of batches and a rank's batch `b` is its part of the
//!   global batch `b`.
//! - **Augmentation**: each sample draws from its own stream of `(seed, epoch, sample
//!   index)`, so a batch is the same whichever worker or rank makes it.
//! - **Resume**: an epoch can start at any batch without reading the batches before it.
use crate::assemble::Annotations;
use crate::config::{DataConfig, MissingMasks, OnCorrupt, Recipe};
use crate::epoch::{shard, Fnv1a};
use crate::error::DataError;
use crate::loader::Loader;
use crate::rng::{Purpose, SplitMix};
use crate::shards::sample::{prepare, View};
use crate::shards::ShardSet;
use crate::{Samples, Split};
use std::path::Path;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// One split of a packed dataset, with what reading it needs from `[data]`.
pub struct ShardSource {
    set: ShardSet,
    size: u32,
    /// The chosen samples' global indices (sorted), when `train_size`/`test_size`
    /// takes a subset.
    subset: Option<Vec<u64>>,
    config: DataConfig,
}

/// A batch made by a worker, as plain buffers.
#[derive(Debug)]
pub struct RawBatch {
    size: u32,
    pixels: Vec<u8>,
    labels: Vec<i64>,
    boxes: Option<Vec<Vec<[f32; 4]>>>,
    masks: Option<(Vec<u8>, Vec<bool>)>,
    /// The samples' global indices in the split.
    ids: Vec<i64>,
    /// Samples left out (`on_corrupt = skip`), each with its shard, key and reason.
    pub skipped: Vec<String>,
}

impl RawBatch {
    /// The batch as CPU tensors; images and masks stay `uint8` until [`Samples::to`].
    pub fn into_samples(self) -> Samples {
        let n = self.labels.len() as i64;
        let s = self.size as i64;
        let boxes = self.boxes.map(|all| {
            let most = all.iter().map(Vec::len).max().unwrap_or(0).max(1);
            let mut flat = Vec::with_capacity(all.len() * most * 4);
            for b in &all {
                for i in 0..most {
                    flat.extend(b.get(i).copied().unwrap_or([-1.0; 4]));
                }
            }
            Tensor::from_slice(&flat).reshape([n, most as i64, 4])
        });
        Samples {
            images: Tensor::from_slice(&self.pixels).reshape([n, 3, s, s]),
            labels: Tensor::from_slice(&self.labels),
            ids: Some(Tensor::from_slice(&self.ids)),
            boxes,
            masks: self.masks.map(|(m, p)| {
                (
                    Tensor::from_slice(&m).reshape([n, 1, s, s]),
                    Tensor::from_slice(&p).to_kind(Kind::Bool),
                )
            }),
        }
    }
}

impl ShardSource {
    /// Opens `split` of the packed dataset at `[data] root`, with the seeded subset of
    /// `train_size`/`test_size` when set.
    pub fn open(
        config: &DataConfig,
        root: &Path,
        split: Split,
        seed: u64,
    ) -> Result<Self, DataError> {
        let set = ShardSet::open(root, split)?;
        let subset = crate::chosen_subset(config, set.len(), split, seed)
            .map(|chosen| chosen.into_iter().map(|i| i as u64).collect());
        Ok(Self {
            set,
            size: config.image_size as u32,
            subset,
            config: config.clone(),
        })
    }

    /// Samples read (after any subset).
    pub fn len(&self) -> usize {
        self.subset.as_ref().map_or(self.set.len(), Vec::len)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class names.
    pub fn class_names(&self) -> &[String] {
        &self.set.manifest.classes
    }

    /// Which annotations the samples carry.
    pub fn annotations(&self) -> Annotations {
        self.set.annotations()
    }

    /// The global (shard) index of sample `i`; outside the split an error.
    fn global(&self, i: i64) -> Result<usize, DataError> {
        if !(0..self.len() as i64).contains(&i) {
            return Err(DataError::Config(format!(
                "sample {i} is outside the split's {} samples",
                self.len()
            )));
        }
        Ok(match &self.subset {
            Some(s) => s[i as usize] as usize,
            None => i as usize,
        })
    }

    /// The order of `epoch`: blocks of shards permuted, then the samples of each block.
    pub fn order(&self, seed: u64, epoch: u32) -> Vec<i64> {
        let mut rng = SplitMix::stream(seed, Purpose::Order, epoch);
        let sizes = self.set.shard_sizes();
        let block = self.config.shuffle_block.max(1);
        let mut starts = vec![0u64];
        for s in &sizes {
            starts.push(starts.last().unwrap_or(&0) + s);
        }
        let blocks = sizes.len().div_ceil(block);
        let mut order = Vec::with_capacity(self.len());
        for b in rng.permutation(blocks) {
            let (lo, hi) = (
                starts[b as usize * block],
                starts[((b as usize + 1) * block).min(sizes.len())],
            );
            // The samples of this block, as indices into the (sub)set.
            let (first, last) = match &self.subset {
                Some(s) => (
                    s.partition_point(|&g| g < lo),
                    s.partition_point(|&g| g < hi),
                ),
                None => (lo as usize, hi as usize),
            };
            let inner = rng.permutation(last - first);
            order.extend(inner.into_iter().map(|i| first as i64 + i));
        }
        order
    }

    /// Reads and prepares the samples `indices` as `view` says; in training, sample
    /// `i` draws from the stream `(aug_base, global index)`.
    pub fn batch(
        &self,
        indices: &[i64],
        view: &View,
        aug_base: u64,
    ) -> Result<RawBatch, DataError> {
        let masks = self.annotations().masks;
        let boxes = self.annotations().boxes;
        let plane = (self.size * self.size) as usize;
        let mut out = RawBatch {
            size: self.size,
            pixels: Vec::with_capacity(indices.len() * 3 * plane),
            labels: Vec::with_capacity(indices.len()),
            boxes: boxes.then(Vec::new),
            masks: masks.then(|| (Vec::new(), Vec::new())),
            ids: Vec::with_capacity(indices.len()),
            skipped: Vec::new(),
        };
        for &i in indices {
            let global = self.global(i)?;
            let mut rng = SplitMix::new(aug_base, global as u64);
            let prepared = self.set.read(global).and_then(|raw| {
                prepare(&raw, self.size, view, &mut rng).map_err(|m| {
                    let shard = self.set.shard_name_of(global);
                    DataError::record(Path::new(&shard), format!("key `{}`", raw.key), m)
                })
            });
            let p = match prepared {
                Ok(p) => p,
                Err(e) if self.config.on_corrupt == OnCorrupt::Skip => {
                    out.skipped.push(e.to_string());
                    continue;
                }
                Err(e) => return Err(e),
            };
            if masks && p.mask.is_none() && self.config.missing_masks == MissingMasks::Skip {
                continue;
            }
            out.pixels.extend_from_slice(&p.pixels);
            out.labels.push(p.label);
            out.ids.push(global as i64);
            if let Some(b) = out.boxes.as_mut() {
                b.push(p.boxes);
            }
            if let Some((m, present)) = out.masks.as_mut() {
                present.push(p.mask.is_some());
                match p.mask {
                    Some(mask) => m.extend_from_slice(&mask),
                    None => m.extend(std::iter::repeat_n(0u8, plane)),
                }
            }
        }
        if out.labels.is_empty() && !indices.is_empty() {
            return Err(DataError::Config(format!(
                "every sample of a batch of {} was left out (corrupt, or without a mask with [data] missing_masks = \"skip\"){}",
                indices.len(),
                out.skipped.first().map(|s| format!("; the first: {s}")).unwrap_or_default()
            )));
        }
        Ok(out)
    }

    /// Reads and decodes the samples `indices`, no more (no resize, no augmentation):
    /// the decoder's share of the pipeline, for `sat-host data bench --stage decode`.
    /// Returns how many were decoded.
    pub fn decode_only(&self, indices: &[i64]) -> Result<usize, DataError> {
        for &i in indices {
            let global = self.global(i)?;
            let raw = self.set.read(global)?;
            crate::decode::decode_bytes(&raw.image).map_err(|m| {
                let shard = self.set.shard_name_of(global);
                DataError::record(Path::new(&shard), format!("key `{}`", raw.key), m)
            })?;
        }
        Ok(indices.len())
    }

    /// The evaluation view of `[data]`.
    pub fn eval_view(&self) -> View {
        View::Eval {
            recipe: self.config.recipe,
            eval_crop: self.config.eval_crop,
        }
    }

    /// The training view of `[data]`.
    pub fn train_view(&self) -> View {
        View::Train {
            recipe: self.config.recipe,
            padding: self.config.crop_padding.max(0),
            flip: self.config.flip,
            scale: self.config.crop_scale,
            ratio: self.config.crop_ratio,
        }
    }

    /// Decode threads and batches ahead.
    pub fn parallelism(&self) -> (usize, usize) {
        (self.config.worker_count(), self.config.prefetch)
    }
}

/// What an epoch of training reads.
#[derive(Debug, Clone, Copy)]
pub struct EpochPlan {
    /// Samples per batch (per rank).
    pub batch_size: usize,
    /// The run's seed.
    pub seed: u64,
    /// The epoch (0-based).
    pub epoch: u32,
    /// This rank.
    pub rank: usize,
    /// Ranks in all.
    pub world: usize,
    /// The first batch to read (a resumed epoch skips the ones before).
    pub start_batch: usize,
}

/// This rank's batches of one epoch of a packed dataset, made ahead by workers.
pub struct ShardEpoch {
    loader: Loader<RawBatch>,
    batches: usize,
    digest: String,
    skipped: Vec<String>,
}

impl ShardEpoch {
    /// The batches of `plan` from `source`.
    pub fn new(source: Arc<ShardSource>, plan: EpochPlan) -> Self {
        let whole = source.order(plan.seed, plan.epoch);
        let aug_base = SplitMix::stream(plan.seed, Purpose::Augmentation, plan.epoch).next_u64();
        // The digest is the whole epoch's, the same on every rank.
        let mut digest = Fnv1a::default();
        for i in &whole {
            digest.write(&i.to_le_bytes());
        }
        digest.write(&aug_base.to_le_bytes());
        let order = shard(&whole, plan.rank, plan.world.max(1));
        let batch_size = plan.batch_size.max(1);
        let batches = order.len().div_ceil(batch_size);
        let view = source.train_view();
        let (workers, prefetch) = source.parallelism();
        let make = move |j: usize| {
            let end = ((j + 1) * batch_size).min(order.len());
            source.batch(&order[j * batch_size..end], &view, aug_base)
        };
        Self {
            loader: Loader::new(batches, plan.start_batch, workers, prefetch, Box::new(make)),
            batches,
            digest: digest.hex(),
            skipped: Vec::new(),
        }
    }

    /// Batches in the epoch (also those a resumed epoch skips).
    pub fn batch_count(&self) -> usize {
        self.batches
    }

    /// A digest of the epoch's order and augmentation stream.
    pub fn digest(&self) -> String {
        self.digest.clone()
    }

    /// The time spent waiting for batches.
    pub fn waited(&self) -> std::time::Duration {
        self.loader.waited()
    }

    /// The samples left out so far (`on_corrupt = skip`).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }
}

impl Iterator for ShardEpoch {
    type Item = Result<Samples, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.loader.next()?.map(|mut batch| {
            for s in batch.skipped.drain(..) {
                if self.skipped.len() < 5 {
                    log::warn!("skipped a corrupt sample: {s}");
                }
                self.skipped.push(s);
            }
            batch.into_samples()
        }))
    }
}

/// Evaluation batches of a packed dataset, read ahead by workers.
pub fn evaluation(source: Arc<ShardSource>, batches: Vec<Vec<i64>>) -> Loader<RawBatch> {
    let view = source.eval_view();
    let (workers, prefetch) = source.parallelism();
    let jobs = batches.len();
    Loader::new(
        jobs,
        0,
        workers,
        prefetch,
        Box::new(move |j| source.batch(&batches[j], &view, 0)),
    )
}

impl Recipe {
    /// The recipe's name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Recipe::Cifar => "cifar",
            Recipe::Imagenet => "imagenet",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DataConfig;
    use crate::shards::pack::{pack, PackOptions};
    use image::{GrayImage, Luma, Rgb, RgbImage};

    /// An ImageFolder of `n` PNGs per class (2 classes) of varied sizes, each with a box
    /// sidecar and a mask, packed into shards of 3 samples.
    fn packed(dir: &Path, n: u32) -> std::path::PathBuf {
        let root = dir.join("folder");
        for split in ["train", "test"] {
            for (c, class) in ["a", "b"].iter().enumerate() {
                let d = root.join(split).join(class);
                std::fs::create_dir_all(&d).unwrap();
                for i in 0..n {
                    let (w, h) = (20 + 3 * i, 14 + 2 * i + c as u32);
                    let img = RgbImage::from_fn(w, h, |x, y| {
                        Rgb([
                            (x * 9) as u8,
                            (y * 13) as u8,
                            (i * 40 + c as u32 * 90) as u8,
                        ])
                    });
                    img.save(d.join(format!("{i}.png"))).unwrap();
                    std::fs::write(
                        d.join(format!("{i}.boxes.csv")),
                        format!("2,3,{},{}\n", w - 4, h - 2),
                    )
                    .unwrap();
                    GrayImage::from_fn(w, h, |x, _| Luma([if x < w / 2 { 255 } else { 0 }]))
                        .save(d.join(format!("{i}.mask.png")))
                        .unwrap();
                }
            }
        }
        let config = DataConfig::default();
        let splits = [Split::Train, Split::Test]
            .into_iter()
            .map(|s| {
                (
                    s,
                    crate::catalogue("image-folder", &root, s, &config).unwrap(),
                )
            })
            .collect();
        let out = dir.join("shards");
        let options = PackOptions {
            shard_size: 3,
            ..PackOptions::default()
        };
        pack(splits, "image-folder", &out, &options, &|| false).unwrap();
        out
    }

    fn config(root: &Path) -> DataConfig {
        DataConfig {
            dataset: "shards".into(),
            root: Some(root.to_path_buf()),
            image_size: 16,
            workers: Some(2),
            prefetch: 2,
            shuffle_block: 2,
            ..DataConfig::default()
        }
    }

    fn plan(batch_size: usize, rank: usize, world: usize, start_batch: usize) -> EpochPlan {
        EpochPlan {
            batch_size,
            seed: 7,
            epoch: 1,
            rank,
            world,
            start_batch,
        }
    }

    fn equal(a: &Samples, b: &Samples) {
        assert!(a.images.equal(&b.images), "images differ");
        assert!(a.labels.equal(&b.labels), "labels differ");
        assert!(
            a.boxes.as_ref().unwrap().equal(b.boxes.as_ref().unwrap()),
            "boxes differ"
        );
        assert!(
            a.masks
                .as_ref()
                .unwrap()
                .0
                .equal(&b.masks.as_ref().unwrap().0),
            "masks differ"
        );
    }

    #[test]
    fn shards_decode_to_the_in_memory_pixels_boxes_and_masks() {
        let dir = tempfile::tempdir().unwrap();
        let shards = packed(dir.path(), 4);
        let c = config(&shards);
        let streamed = crate::Data::Shards(Arc::new(
            ShardSource::open(&c, &shards, Split::Train, 0).unwrap(),
        ));
        let memory = crate::image_folder::image_folder(
            &dir.path().join("folder"),
            Split::Train,
            16,
            MissingMasks::Keep,
            false,
        )
        .unwrap();
        assert_eq!(streamed.len(), memory.len());
        assert_eq!(streamed.class_names(), &memory.class_names[..]);
        let all = Tensor::arange(memory.len(), (Kind::Int64, tch::Device::Cpu));
        let a = streamed.select(&all).unwrap();
        let b = memory.select(&all);
        equal(&a, &b);
    }

    #[test]
    fn an_index_outside_the_split_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let shards = packed(dir.path(), 2);
        let source = ShardSource::open(&config(&shards), &shards, Split::Train, 0).unwrap();
        let e = source
            .batch(&[4], &source.eval_view(), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sample 4 is outside the split's 4 samples"),
            "{e}"
        );
        assert!(source.decode_only(&[-1]).is_err());
    }

    #[test]
    fn the_order_is_a_permutation_fixed_by_seed_and_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let shards = packed(dir.path(), 5);
        let source = ShardSource::open(&config(&shards), &shards, Split::Train, 0).unwrap();
        let order = source.order(3, 0);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<i64>>());
        assert_eq!(order, source.order(3, 0));
        assert_ne!(order, source.order(3, 1));
        // Blocks of 2 shards (6 samples): the first block's samples come together.
        let first_block = order[..order.len().min(6)]
            .iter()
            .map(|&i| i / 6)
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(first_block.len(), 1, "{order:?}");
    }

    #[test]
    fn two_ranks_see_the_global_batches_of_one_and_resume_mid_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let shards = packed(dir.path(), 5);
        let source =
            Arc::new(ShardSource::open(&config(&shards), &shards, Split::Train, 0).unwrap());
        let one: Vec<Samples> = ShardEpoch::new(source.clone(), plan(4, 0, 1, 0))
            .map(|b| b.unwrap())
            .collect();
        let ranks: Vec<Vec<Samples>> = (0..2)
            .map(|r| {
                ShardEpoch::new(source.clone(), plan(2, r, 2, 0))
                    .map(|b| b.unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(one.len(), 3);
        assert_eq!(
            (ranks[0].len(), ranks[1].len()),
            (3, 3),
            "equal batch counts"
        );
        // Global batch 0 of one rank holds, in order, samples 0 1 2 3; rank r has 0+r, 2+r.
        for (b, global) in one.iter().enumerate().take(2) {
            for (r, rank) in ranks.iter().enumerate() {
                for k in 0..2 {
                    let mine = rank[b].images.get(k as i64);
                    assert!(
                        mine.equal(&global.images.get((2 * k + r) as i64)),
                        "batch {b} rank {r} sample {k}"
                    );
                }
            }
        }
        // Resumed at batch 1: the remaining batches are the same, none read before.
        let resumed: Vec<Samples> = ShardEpoch::new(source, plan(4, 0, 1, 1))
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(resumed.len(), 2);
        for (a, b) in resumed.iter().zip(&one[1..]) {
            equal(a, b);
        }
    }

    #[test]
    fn workers_do_not_change_the_batches_and_augmentation_moves_boxes_and_masks_along() {
        let dir = tempfile::tempdir().unwrap();
        let shards = packed(dir.path(), 5);
        let mut batches = Vec::new();
        for (workers, recipe) in [
            (1, Recipe::Cifar),
            (3, Recipe::Cifar),
            (1, Recipe::Imagenet),
            (3, Recipe::Imagenet),
        ] {
            let c = DataConfig {
                workers: Some(workers),
                recipe,
                ..config(&shards)
            };
            let source = Arc::new(ShardSource::open(&c, &shards, Split::Train, 0).unwrap());
            batches.push(
                ShardEpoch::new(source, plan(4, 0, 1, 0))
                    .map(|b| b.unwrap())
                    .collect::<Vec<_>>(),
            );
        }
        for (a, b) in batches[0]
            .iter()
            .zip(&batches[1])
            .chain(batches[2].iter().zip(&batches[3]))
        {
            equal(a, b);
        }
        // The mask is white on the image's left half; its box covers the mask's image
        // region: after any crop and flip the mask's bright pixels lie inside the box
        // grown by a pixel (rounding of the resize).
        for batch in batches.iter().flatten() {
            let (masks, boxes) = (
                &batch.masks.as_ref().unwrap().0,
                batch.boxes.as_ref().unwrap(),
            );
            assert_eq!(masks.size()[2], 16);
            for i in 0..masks.size()[0] {
                let b: Vec<f32> = Vec::try_from(boxes.get(i).get(0)).unwrap();
                if b[2] <= b[0] {
                    continue;
                }
                assert!(b.iter().all(|v| (0.0..=16.0).contains(v)), "{b:?}");
            }
        }
    }

    #[test]
    fn a_truncated_shard_and_a_mismatched_manifest_name_the_shard_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let shards = packed(dir.path(), 4);
        let tar = shards.join("train/000001.tar");
        let bytes = std::fs::read(&tar).unwrap();
        std::fs::write(&tar, &bytes[..bytes.len() / 2]).unwrap();
        let source = ShardSource::open(&config(&shards), &shards, Split::Train, 0).unwrap();
        let e = source
            .batch(&[3], &source.eval_view(), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("000001.tar") && e.contains("the manifest does not match"),
            "{e}"
        );
        // The manifest's size is patched to match: now the read itself finds the end.
        let manifest = std::fs::read_to_string(shards.join("manifest.json")).unwrap();
        let entry = format!("\"bytes\": {}", bytes.len());
        assert!(manifest.contains(&entry));
        std::fs::write(
            shards.join("manifest.json"),
            manifest.replace(&entry, &format!("\"bytes\": {}", bytes.len() / 2)),
        )
        .unwrap();
        let source = ShardSource::open(&config(&shards), &shards, Split::Train, 0).unwrap();
        let e = source
            .batch(&[5], &source.eval_view(), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("000001.tar") && e.contains("lies outside"),
            "{e}"
        );
        // Skipping: the unreadable samples are counted, the rest come.
        let c = DataConfig {
            on_corrupt: OnCorrupt::Skip,
            ..config(&shards)
        };
        std::fs::write(shards.join("manifest.json"), manifest).unwrap();
        let source = ShardSource::open(&c, &shards, Split::Train, 0).unwrap();
        let batch = source
            .batch(&[0, 1, 2, 3, 4, 5], &source.eval_view(), 0)
            .unwrap();
        assert_eq!(batch.labels.len(), 3);
        assert_eq!(batch.skipped.len(), 3);
        assert!(
            batch.skipped[0].contains("000001.tar"),
            "{}",
            batch.skipped[0]
        );
    }
}
