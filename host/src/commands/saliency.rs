//! `sat-host saliency`: a PNG gallery of what each saliency source produces on test
//! images, and `gallery.json` listing the pictures.
use super::{prepare, set_list, ConfigArgs, GlobalArgs};
use crate::config::RunConfig;
use crate::data::Data;
use crate::plugins::oracle::ModelOracle;
use crate::plugins::pipeline::create_saliency;
use crate::plugins::registry::Registry;
use crate::report::gallery;
use crate::train::{build_network, checkpoint::load_weights, load_datasets};
use anyhow::{bail, Context};
use clap::Args;
use sat_core::{Epsilon, OracleAdapter, Phase};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::{nn::ModuleT, Device};

/// `sat-host saliency`.
#[derive(Args, Debug)]
pub struct SaliencyArgs {
    /// The configuration and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Saliency source(s) to show (repeatable; default: `[train] saliency`).
    #[arg(long = "plugin", value_name = "NAME")]
    pub plugins: Vec<String>,
    /// Weights for the model the host answers oracle calls with (sources with
    /// `teacher = "self"`); default: the freshly initialised model.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Test images shown (1 to 1000).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub samples: i64,
    /// Budget of the perturbed-image column `clip(x − ε·S)`.
    #[arg(long, value_name = "EPS", default_value = "8/255", value_parser = Epsilon::parse)]
    pub eps: Epsilon,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Writes the gallery and prints the files.
pub fn run(global: &GlobalArgs, args: &SaliencyArgs) -> anyhow::Result<ExitCode> {
    let extra: Vec<_> = set_list("train.saliency", &args.plugins)
        .into_iter()
        .collect();
    let (config, registry) = prepare(global, &args.config, &extra)?;
    if config.train.saliency.is_empty() {
        bail!("no saliency source to show: pass --plugin NAME or set [train] saliency");
    }
    let device = crate::device::open(&config)?;
    // Ctrl-C stops the data loading and the sources (the oracle refuses their model
    // calls); gallery.json, written last, is then missing.
    crate::interrupt::install().context("installing the SIGINT/SIGTERM handler")?;
    match gallery_of(args, &config, &registry, device) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if crate::interrupt::is_interrupted(&e) => {
            eprintln!(
                "saliency {}; the gallery in {} is incomplete (no gallery.json)",
                crate::interrupt::or_interrupted(e),
                args.out.display()
            );
            Ok(ExitCode::from(crate::interrupt::exit_code()))
        }
        Err(e) => Err(e),
    }
}

/// Loads the test set and the model and writes the gallery; returns the pictures.
fn gallery_of(
    args: &SaliencyArgs,
    config: &RunConfig,
    registry: &Registry,
    device: Device,
) -> anyhow::Result<Vec<PathBuf>> {
    let (_, test) = load_datasets(config)?;
    let mut net = build_network(config, test.num_classes(), device)?;
    match &args.checkpoint {
        Some(c) => load_weights(&mut net.vs, c)?,
        None => {
            log::info!("no --checkpoint: sources with teacher = \"self\" see an untrained model")
        }
    }
    let shown = Shown {
        config,
        registry,
        test: &test,
        samples: args.samples,
        epsilon: args.eps.0,
        device,
    };
    shown.write(net.model.as_ref(), &args.out)
}

/// What the gallery shows.
struct Shown<'a> {
    config: &'a RunConfig,
    registry: &'a Registry,
    test: &'a Data,
    samples: i64,
    epsilon: f64,
    device: Device,
}

impl Shown<'_> {
    /// Writes `<out>/<source>.png` for every source of `[train] saliency` on `samples`
    /// test images spread over the test set, and `<out>/gallery.json` listing them;
    /// `model` answers the sources' oracle calls. Returns the pictures.
    fn write(&self, model: &dyn ModuleT, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let n = self.samples.clamp(1, self.test.len());
        let index = self.test.spread_batches(n as usize, n as usize).remove(0);
        let data = self.test.select(&index)?.to(self.device);
        let adapter = OracleAdapter(ModelOracle {
            model,
            classes: self.test.num_classes() as u32,
        });
        let oracle = adapter.as_ref();
        let epochs = self.config.train.epochs;
        let batch = data.batch(epochs, epochs, Phase::Evaluation);
        let mut written = Vec::new();
        let mut entries = Vec::new();
        for name in &self.config.train.saliency {
            crate::interrupt::check()?;
            let mut source = create_saliency(self.registry, self.config, name)?;
            let map = source.saliency(&batch, &oracle)?;
            let perturbed = (&data.images - &map * self.epsilon).clamp(0.0, 1.0);
            let file = out.join(format!("{}.png", name.replace(['/', '\\'], "_")));
            gallery::write_png(&file, &data.images, &map, &perturbed)?;
            log::info!("{name}: {}", file.display());
            entries.push(gallery::entry(name, &file, &map));
            written.push(file);
        }
        gallery::write_listing(out, self.epsilon, n, entries)?;
        Ok(written)
    }
}
