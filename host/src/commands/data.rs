//! `sat-host data`: pack a dataset into tar shards, summarise packed shards, and measure
//! how fast they stream (read, decode, augment).
use super::GlobalArgs;
use crate::config::{Cifar100Labels, DataConfig};
use crate::data::catalogue::Catalogue;
use crate::data::config::{OnCorrupt, Recipe};
use crate::data::loader::Loader;
use crate::data::shards::pack::{pack, PackOptions};
use crate::data::shards::{split_name, Manifest, ShardSet, Store};
use crate::data::stream::{EpochPlan, ShardEpoch, ShardSource};
use crate::data::Split;
use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// `sat-host data`.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DataCommand,
}

/// The `data` subcommands.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Pack a dataset into WebDataset-style tar shards with an index per shard and a
    /// manifest (read by `[data] dataset = "shards"`).
    Pack(PackArgs),
    /// Summarise a packed dataset: splits, shards, samples, sizes, classes; --verify
    /// also checks every shard's digest and index.
    Inspect(InspectArgs),
    /// Measure streaming: images/s read, decoded and augmented, per worker, and the
    /// time to the first batch.
    Bench(BenchArgs),
}

/// A format `data pack` reads.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `train/<class>/*`, `test/<class>/*` (or `val/`), with sidecars.
    ImageFolder,
    /// `tiny-imagenet-200/` as it ships.
    TinyImagenet,
    /// Oxford Flower-17 with trimaps.
    Flowers17,
    /// CIFAR-10's binary batches.
    Cifar10,
    /// CIFAR-100's binary files.
    Cifar100,
    /// ILSVRC-2012 CLS-LOC (plain or Kaggle layout) with its XML boxes.
    Imagenet,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::ImageFolder => "image-folder",
            Format::TinyImagenet => "tiny-imagenet",
            Format::Flowers17 => "flowers17",
            Format::Cifar10 => "cifar10",
            Format::Cifar100 => "cifar100",
            Format::Imagenet => "imagenet",
        }
    }
}

/// Which splits `data pack` packs.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Splits {
    /// Training and test.
    Both,
    /// Training only.
    Train,
    /// Test only.
    Test,
}

/// `sat-host data pack`.
#[derive(Args, Debug)]
pub struct PackArgs {
    /// The dataset's directory, as the format ships it.
    pub root: PathBuf,
    /// The dataset's format.
    #[arg(long = "from", value_enum)]
    pub format: Format,
    /// The directory to write (must not hold a packed dataset yet).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Samples per shard (1 to 1 000 000).
    #[arg(long, default_value_t = 1000)]
    pub shard_size: usize,
    /// Store images with their shorter side at most this many pixels (16 to 8192;
    /// default: as they are).
    #[arg(long, value_name = "PIXELS")]
    pub resize: Option<u32>,
    /// JPEG quality of resized JPEGs (1 to 100).
    #[arg(long, default_value_t = 90)]
    pub quality: u8,
    /// Which splits.
    #[arg(long, value_enum, default_value_t = Splits::Both)]
    pub split: Splits,
    /// A sample that cannot be packed (unreadable image, bad box): stop, or skip it.
    #[arg(long, value_enum, default_value_t = CorruptArg::Error)]
    pub on_corrupt: CorruptArg,
    /// CIFAR-100's labels.
    #[arg(long, value_enum, default_value_t = LabelsArg::Fine)]
    pub cifar100_labels: LabelsArg,
}

/// `--on-corrupt`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorruptArg {
    /// Stop with an error naming the sample.
    Error,
    /// Skip it, with a warning.
    Skip,
}

/// `--cifar100-labels`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelsArg {
    /// 100 classes.
    Fine,
    /// 20 superclasses.
    Coarse,
}

/// `sat-host data inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A packed dataset's directory or http:// URL.
    pub root: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Check every shard's SHA-256 and index against the manifest.
    #[arg(long)]
    pub verify: bool,
}

/// `sat-host data bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A packed dataset's directory or http:// URL.
    pub root: PathBuf,
    /// The split to read.
    #[arg(long, value_enum, default_value_t = SplitArg::Train)]
    pub split: SplitArg,
    /// The augmentation recipe.
    #[arg(long, value_enum, default_value_t = RecipeArg::Imagenet)]
    pub recipe: RecipeArg,
    /// Side of the batches' images (8 to 1024).
    #[arg(long, default_value_t = 224)]
    pub image_size: i64,
    /// Decode threads (1 to 1024; default: all cores but one).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Samples per batch (1 to 65 536).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Batches measured after the first (0: the whole epoch).
    #[arg(long, default_value_t = 50)]
    pub batches: usize,
    /// What to measure: the whole pipeline (read, decode, crop, resize, flip, batch),
    /// or reading and decoding alone.
    #[arg(long, value_enum, default_value_t = Stage::Full)]
    pub stage: Stage,
    /// Also write the figures as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `--stage`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Read, decode, augment, batch.
    Full,
    /// Read and decode (JPEG or PNG to RGB) only.
    Decode,
}

/// `--split`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitArg {
    /// Training.
    Train,
    /// Test.
    Test,
}

/// `--recipe`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipeArg {
    /// Random-resized crop and flip.
    Imagenet,
    /// Resize, pad-crop and flip.
    Cifar,
}

/// Runs `sat-host data`.
pub fn run(_global: &GlobalArgs, args: &DataArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        DataCommand::Pack(a) => run_pack(a),
        DataCommand::Inspect(a) => run_inspect(a),
        DataCommand::Bench(a) => run_bench(a),
    }
}

impl PackArgs {
    /// The pack options, each flag range-checked.
    fn options(&self) -> anyhow::Result<PackOptions> {
        if !(1..=1_000_000).contains(&self.shard_size) {
            bail!("--shard-size {} is outside [1, 1000000]", self.shard_size);
        }
        if let Some(r) = self.resize {
            if !(16..=8192).contains(&r) {
                bail!("--resize {r} is outside [16, 8192]");
            }
        }
        if !(1..=100).contains(&self.quality) {
            bail!("--quality {} is outside [1, 100]", self.quality);
        }
        Ok(PackOptions {
            shard_size: self.shard_size,
            resize: self.resize,
            quality: self.quality,
            on_corrupt: match self.on_corrupt {
                CorruptArg::Error => OnCorrupt::Error,
                CorruptArg::Skip => OnCorrupt::Skip,
            },
        })
    }

    /// The listed splits to pack.
    fn catalogues(&self) -> anyhow::Result<Vec<(Split, Catalogue)>> {
        let config = DataConfig {
            cifar100_labels: match self.cifar100_labels {
                LabelsArg::Fine => Cifar100Labels::Fine,
                LabelsArg::Coarse => Cifar100Labels::Coarse,
            },
            ..DataConfig::default()
        };
        let splits: &[Split] = match self.split {
            Splits::Both => &[Split::Train, Split::Test],
            Splits::Train => &[Split::Train],
            Splits::Test => &[Split::Test],
        };
        let format = self.format.name();
        let mut listed = Vec::new();
        for &split in splits {
            let name = split_name(split);
            let catalogue = crate::data::catalogue(format, &self.root, split, &config)
                .with_context(|| {
                    format!(
                        "listing the {name} split of {} ({format})",
                        self.root.display()
                    )
                })?;
            log::info!(
                "{format} {name}: {} samples, {} classes{}{}",
                catalogue.entries.len(),
                catalogue.class_names.len(),
                if catalogue.annotations.boxes {
                    ", boxes"
                } else {
                    ""
                },
                if catalogue.annotations.masks {
                    ", masks"
                } else {
                    ""
                },
            );
            listed.push((split, catalogue));
        }
        Ok(listed)
    }
}

fn run_pack(args: &PackArgs) -> anyhow::Result<ExitCode> {
    let options = args.options()?;
    // Ctrl-C or SIGTERM stops packing at the next sample, leaving no manifest (a second
    // signal ends the process at once).
    crate::interrupt::install().context("installing the SIGINT/SIGTERM handler")?;
    let listed = args.catalogues()?;
    let start = Instant::now();
    let report = pack(
        listed,
        args.format.name(),
        &args.out,
        &options,
        &crate::interrupt::requested,
    )
    .with_context(|| {
        format!(
            "packing {} into {}",
            args.root.display(),
            args.out.display()
        )
    })?;
    for (name, split) in &report.manifest.splits {
        let bytes: u64 = split.shards.iter().map(|s| s.bytes).sum();
        log::info!(
            "{name}: {} samples in {} shards, {:.1} MiB",
            split.samples,
            split.shards.len(),
            bytes as f64 / (1 << 20) as f64
        );
    }
    if !report.skipped.is_empty() {
        log::warn!("{} samples skipped as unreadable", report.skipped.len());
    }
    log::info!(
        "packed into {} in {:.1} s",
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_inspect(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let store = Store::parse(&args.root)?;
    let manifest = Manifest::read(&store)?;
    if args.verify {
        verify(&args.root, &store, &manifest)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: sat shards v{}, packed from {}{}",
        args.root.display(),
        manifest.version,
        manifest.source,
        manifest
            .resize
            .map(|r| format!(", shorter side ≤ {r} px"))
            .unwrap_or_default()
    );
    let shown: Vec<&str> = manifest
        .classes
        .iter()
        .take(8)
        .map(String::as_str)
        .collect();
    println!(
        "classes: {} ({}{})",
        manifest.classes.len(),
        shown.join(", "),
        if manifest.classes.len() > 8 {
            ", …"
        } else {
            ""
        }
    );
    println!(
        "annotations: boxes {}, masks {}",
        manifest.annotations.boxes, manifest.annotations.masks
    );
    for (name, split) in &manifest.splits {
        let bytes: u64 = split.shards.iter().map(|s| s.bytes).sum();
        println!(
            "{name}: {} samples in {} shards, {:.1} MiB ({:.1} KiB per sample)",
            split.samples,
            split.shards.len(),
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / 1024.0 / split.samples.max(1) as f64
        );
    }
    if args.verify {
        println!("verified: every shard's SHA-256 and index match the manifest");
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks every shard's digest and index; the first mismatch is the error.
fn verify(root: &Path, store: &Store, manifest: &Manifest) -> anyhow::Result<()> {
    for (name, split) in &manifest.splits {
        let which = if name == "train" {
            Split::Train
        } else {
            Split::Test
        };
        let set = ShardSet::open(root, which)?;
        for (i, shard) in split.shards.iter().enumerate() {
            crate::interrupt::check()?;
            set.index(i)?;
            let bytes = store.read_all(&shard.tar, shard.bytes)?;
            let digest = format!("{:x}", Sha256::digest(&bytes));
            if digest != shard.sha256 {
                bail!(
                    "{}: SHA-256 {digest} does not match the manifest's {}",
                    store.name(&shard.tar),
                    shard.sha256
                );
            }
        }
    }
    Ok(())
}

impl BenchArgs {
    /// The `[data]` section the bench reads with, each flag range-checked.
    fn config(&self) -> anyhow::Result<DataConfig> {
        if !(8..=1024).contains(&self.image_size) {
            bail!("--image-size {} is outside [8, 1024]", self.image_size);
        }
        if !(1..=65_536).contains(&self.batch_size) {
            bail!("--batch-size {} is outside [1, 65536]", self.batch_size);
        }
        if let Some(w) = self.workers {
            if !(1..=1024).contains(&w) {
                bail!("--workers {w} is outside [1, 1024]");
            }
        }
        Ok(DataConfig {
            dataset: "shards".into(),
            root: Some(self.root.clone()),
            image_size: self.image_size,
            recipe: match self.recipe {
                RecipeArg::Imagenet => Recipe::Imagenet,
                RecipeArg::Cifar => Recipe::Cifar,
            },
            crop_padding: if self.recipe == RecipeArg::Cifar {
                self.image_size / 8
            } else {
                0
            },
            workers: self.workers,
            ..DataConfig::default()
        })
    }
}

/// The batches `data bench` times, as their sizes: whole batches (`Stage::Full`) or
/// decoded images only (`Stage::Decode`).
fn bench_batches(
    stage: Stage,
    source: Arc<ShardSource>,
    plan: EpochPlan,
) -> Box<dyn Iterator<Item = Result<usize, crate::data::DataError>>> {
    match stage {
        Stage::Full => Box::new(
            ShardEpoch::new(source, plan).map(|b| b.map(|s| s.labels.size()[0] as usize)),
        ),
        Stage::Decode => {
            let total = source.len().div_ceil(plan.batch_size);
            let order = source.order(plan.seed, plan.epoch);
            let batches: Vec<Vec<i64>> =
                order.chunks(plan.batch_size).map(<[i64]>::to_vec).collect();
            let (workers, prefetch) = source.parallelism();
            let decode = move |j: usize| source.decode_only(&batches[j]);
            Box::new(Loader::new(total, 0, workers, prefetch, Box::new(decode)))
        }
    }
}

fn run_bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    // The consumer only stacks batches: libtorch's intra-op threads would spin on the
    // cores the workers use (the PyTorch reference sets one thread too).
    tch::set_num_threads(1);
    let split = match args.split {
        SplitArg::Train => Split::Train,
        SplitArg::Test => Split::Test,
    };
    let start = Instant::now();
    let source = Arc::new(ShardSource::open(&config, &args.root, split, 0)?);
    let plan = EpochPlan {
        batch_size: args.batch_size,
        seed: 0,
        epoch: 0,
        rank: 0,
        world: 1,
        start_batch: 0,
    };
    let total = source.len().div_ceil(args.batch_size);
    let mut epoch = bench_batches(args.stage, source, plan);
    epoch.next().context("the split has no samples")??;
    let first_batch_s = start.elapsed().as_secs_f64();
    let wanted = if args.batches == 0 {
        total - 1
    } else {
        args.batches.min(total - 1)
    };
    let bar = crate::logging::progress_bar(
        wanted as u64,
        "stream [{bar:30}] {pos}/{len} batches ({per_sec}, {elapsed}<{eta})",
    );
    let steady = Instant::now();
    let mut images = 0usize;
    for batch in epoch.by_ref().take(wanted) {
        crate::interrupt::check()?;
        images += batch?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = steady.elapsed().as_secs_f64();
    let workers = config.worker_count();
    let images_per_s = images as f64 / seconds.max(1e-9);
    let peak = crate::report::process_status_mib("VmHWM");
    println!(
        "sat: {images_per_s:.0} images/s with {workers} workers ({:.0} per worker), first batch after {first_batch_s:.2} s, peak RSS {peak:.0} MiB",
        images_per_s / workers as f64,
    );
    if let Some(path) = &args.json {
        let figures = serde_json::json!({
            "tool": "sat",
            "root": args.root.display().to_string(),
            "recipe": config.recipe.as_str(),
            "stage": if args.stage == Stage::Full { "full" } else { "decode" },
            "size": args.image_size,
            "workers": workers,
            "batch_size": args.batch_size,
            "images": images,
            "seconds": seconds,
            "images_per_s": images_per_s,
            "per_core": images_per_s / workers as f64,
            "first_batch_s": first_batch_s,
            "peak_rss_mib": peak,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
