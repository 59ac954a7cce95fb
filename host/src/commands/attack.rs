//! `sat-host attack`: runs one attack at one budget on test images, exactly as
//! `sat-host eval` does (same samples, batches and per-batch seeds, so the robust
//! accuracy is eval's), and saves the adversarial examples: a safetensors file of clean
//! and adversarial images, labels, predictions and logits, and optionally a PNG gallery.
mod file;

use super::{prepare_from, ConfigArgs, GlobalArgs};
use crate::config::RunConfig;
use crate::data::Data;
use crate::eval::{checked_logits, seeded_inputs};
use crate::plugins::oracle::ModelOracle;
use crate::plugins::pipeline::{create_eval_attack, Pipeline};
use crate::report::gallery::{self, AttackCaption};
use crate::train::{build_network, checkpoint, load_datasets};
use anyhow::{bail, Context};
use clap::Args;
use sat_core::{ComponentKind, Epsilon, OracleAdapter, ThreatModel};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::{nn::ModuleT, Device, Kind, Tensor};

/// `sat-host attack`.
#[derive(Args, Debug)]
pub struct AttackArgs {
    /// A run directory: its config.toml and checkpoint.safetensors.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["checkpoint"])]
    pub run: Option<PathBuf>,
    /// The configuration and overrides (with --checkpoint, or a [model] torchscript).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Checkpoint to attack (with --config).
    #[arg(long, value_name = "FILE", requires = "config")]
    pub checkpoint: Option<PathBuf>,
    /// The attack.
    #[arg(long, value_name = "NAME")]
    pub attack: String,
    /// The budget, e.g. `8/255`.
    #[arg(long, value_name = "EPS", value_parser = Epsilon::parse)]
    pub eps: Epsilon,
    /// The safetensors file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write a PNG gallery (one picture per image and gallery.json) to DIR.
    #[arg(long, value_name = "DIR")]
    pub png: Option<PathBuf>,
    /// Test images attacked, spread over the test set as eval picks them (0 = all;
    /// default: `[eval] max_samples`; at most 100 000 000).
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100_000_000))]
    pub samples: Option<usize>,
    /// Replace --out, and write into a --png directory that is not empty.
    #[arg(long)]
    pub force: bool,
}

/// The model to attack: config, checkpoint (none for a TorchScript model), and what the
/// output records as its source.
struct Source {
    config: ConfigArgs,
    checkpoint: Option<PathBuf>,
    described: String,
}

impl AttackArgs {
    fn source(&self) -> anyhow::Result<Source> {
        let show = |p: &Path| {
            p.canonicalize()
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        };
        Ok(match (&self.run, &self.config.config) {
            (Some(dir), _) => Source {
                config: ConfigArgs {
                    config: Some(dir.join("config.toml")),
                    sets: self.config.sets.clone(),
                },
                checkpoint: Some(dir.join(checkpoint::CHECKPOINT_FILE)),
                described: show(dir),
            },
            (None, Some(config)) => Source {
                config: self.config.clone(),
                checkpoint: self.checkpoint.clone(),
                described: match &self.checkpoint {
                    Some(c) => show(c),
                    None => show(config),
                },
            },
            (None, None) => bail!(
                "attack needs --run DIR, --config FILE with --checkpoint FILE, or a --config whose [model] names a torchscript file"
            ),
        })
    }

    /// Refuses outputs that would replace something, unless --force.
    fn check_outputs(&self) -> anyhow::Result<()> {
        if self.out.is_dir() {
            bail!(
                "--out {} is a directory; it names the safetensors file to write",
                self.out.display()
            );
        }
        if !self.force && std::fs::symlink_metadata(&self.out).is_ok() {
            bail!(
                "--out {} exists; pass --force to replace it",
                self.out.display()
            );
        }
        if let Some(dir) = &self.png {
            let busy = std::fs::read_dir(dir).is_ok_and(|mut e| e.next().is_some());
            if busy && !self.force {
                bail!(
                    "--png {}: the directory exists and is not empty; pass --force to write into it",
                    dir.display()
                );
            }
        }
        Ok(())
    }
}

/// Attacks, writes the file (and the gallery), prints the accuracies.
pub fn run(global: &GlobalArgs, args: &AttackArgs) -> anyhow::Result<ExitCode> {
    let source = args.source()?;
    args.check_outputs()?;
    let (mut config, registry) = prepare_from(global, &source.config, &[], args.run.is_some())?;
    registry
        .find(&args.attack, ComponentKind::Attack)
        .map_err(|e| anyhow::anyhow!("--attack: {e}"))?;
    // The model is checked for gradients as for an evaluation with this attack.
    config.eval.attacks = vec![args.attack.clone()];
    let device = crate::device::open(&config)?;
    // From here on Ctrl-C stops the command, data loading included; nothing is written
    // before the attack has run.
    crate::interrupt::install().context("installing the SIGINT/SIGTERM handler")?;
    let (result, threat, class_names) = match attack(args, &source, &config, &registry, device) {
        Err(e) if crate::interrupt::is_interrupted(&e) => {
            eprintln!(
                "attack {}; nothing written",
                crate::interrupt::or_interrupted(e)
            );
            return Ok(ExitCode::from(crate::interrupt::exit_code()));
        }
        other => other?,
    };
    let meta = metadata(args, &threat, &source, &config, &result, &class_names)?;
    file::write(&args.out, &result.tensors(), &meta)?;
    println!("{}", args.out.display());
    if let Some(dir) = &args.png {
        let captions = result.captions(&class_names)?;
        let header = serde_json::json!({ "attack": args.attack, "norm": threat.norm.as_str(), "epsilon": threat.epsilon, "source": source.described });
        gallery::write_attack_gallery(dir, &result.clean, &result.adversarial, &captions, header)?;
        println!("{}", dir.display());
    }
    println!(
        "  {} images, clean accuracy {:.4}, robust accuracy {:.4} ({}, {}, eps {})",
        result.labels.size()[0],
        result.accuracy(&result.predicted_clean),
        result.accuracy(&result.predicted_adversarial),
        args.attack,
        threat.norm.as_str(),
        args.eps.shown(threat.norm.as_str())
    );
    Ok(ExitCode::SUCCESS)
}

/// Loads the test set and the model of `source` and runs the attack; returns what it
/// produced, its threat model and the class names.
fn attack(
    args: &AttackArgs,
    source: &Source,
    config: &RunConfig,
    registry: &crate::plugins::registry::Registry,
    device: Device,
) -> anyhow::Result<(Attacked, ThreatModel, Vec<String>)> {
    // The attack and its budget first: a refusal before any work.
    let attack = create_eval_attack(registry, config, &args.attack, args.eps)?;
    let threat = attack.threat;
    crate::config::validate::budget_in_range(
        threat.norm.as_str(),
        args.eps.0,
        config.data.image_size,
    )
    .map_err(|why| {
        anyhow::anyhow!(
            "--eps: {why} ({} is a {} attack)",
            args.attack,
            threat.norm.as_str()
        )
    })?;
    let (_, test) = load_datasets(config)?;
    let mut net = build_network(config, test.num_classes(), device)?;
    match (&source.checkpoint, &config.model.torchscript) {
        (Some(_), Some(ts)) => bail!(
            "[model] torchscript = {} holds its own weights; attack it with --config alone, without a checkpoint",
            ts.display()
        ),
        (Some(ckpt), None) => checkpoint::load_weights(&mut net.vs, ckpt)?,
        (None, Some(ts)) => log::info!("attacking TorchScript model {}", ts.display()),
        (None, None) => bail!(
            "attack --config without --checkpoint needs a [model] torchscript file; pass --checkpoint FILE"
        ),
    }
    let mut pipeline = Pipeline::new(registry, config, Some(attack))?;
    let samples = args.samples.unwrap_or(config.eval.max_samples);
    let result = attack_batches(
        net.model.as_ref(),
        &test,
        config,
        &mut pipeline,
        samples,
        device,
    )
    .map_err(|e| {
        if crate::interrupt::is_interrupted(&e) {
            crate::interrupt::or_interrupted(e)
        } else {
            e.context(format!(
                "attacking with {} at epsilon {}",
                args.attack, args.eps
            ))
        }
    })?;
    Ok((result, threat, test.class_names().to_vec()))
}

/// What the attack produced, on the CPU, in test-set order of the chosen samples.
struct Attacked {
    clean: Tensor,
    adversarial: Tensor,
    labels: Tensor,
    logits_clean: Tensor,
    logits_adversarial: Tensor,
    predicted_clean: Tensor,
    predicted_adversarial: Tensor,
    targets: Option<Tensor>,
}

impl Attacked {
    /// The named tensors of the file.
    fn tensors(&self) -> Vec<(&'static str, Tensor)> {
        let mut named = vec![
            ("adversarial", self.adversarial.shallow_clone()),
            ("clean", self.clean.shallow_clone()),
            ("labels", self.labels.shallow_clone()),
            ("predicted_clean", self.predicted_clean.shallow_clone()),
            (
                "predicted_adversarial",
                self.predicted_adversarial.shallow_clone(),
            ),
            ("logits_clean", self.logits_clean.shallow_clone()),
            (
                "logits_adversarial",
                self.logits_adversarial.shallow_clone(),
            ),
        ];
        if let Some(t) = &self.targets {
            named.push(("targets", t.shallow_clone()));
        }
        named
    }

    /// The share of `predicted` equal to the labels.
    fn accuracy(&self, predicted: &Tensor) -> f64 {
        let n = self.labels.size()[0].max(1) as f64;
        predicted
            .eq_tensor(&self.labels)
            .sum(Kind::Int64)
            .int64_value(&[]) as f64
            / n
    }

    /// The class names shown in the gallery.
    fn captions(&self, names: &[String]) -> anyhow::Result<Vec<AttackCaption>> {
        let name = |k: i64| {
            names
                .get(k as usize)
                .cloned()
                .unwrap_or_else(|| format!("class {k}"))
        };
        let list = |t: &Tensor| Vec::<i64>::try_from(t).context("reading classes");
        let (labels, clean, adv) = (
            list(&self.labels)?,
            list(&self.predicted_clean)?,
            list(&self.predicted_adversarial)?,
        );
        let targets = self.targets.as_ref().map(list).transpose()?;
        Ok((0..labels.len())
            .map(|i| AttackCaption {
                label: name(labels[i]),
                predicted_clean: name(clean[i]),
                predicted_adversarial: name(adv[i]),
                target: targets.as_ref().map(|t| name(t[i])),
            })
            .collect())
    }
}

/// Attacks `samples` test images (0 = all) in eval's batches, seeding each batch as
/// eval does, and gathers images, logits and predictions.
fn attack_batches(
    model: &dyn ModuleT,
    test: &Data,
    config: &RunConfig,
    pipeline: &mut Pipeline,
    samples: usize,
    device: Device,
) -> anyhow::Result<Attacked> {
    let adapter = OracleAdapter(ModelOracle {
        model,
        classes: test.num_classes() as u32,
    });
    let oracle = adapter.as_ref();
    let batches = test.spread_batches(samples, config.eval.batch_size);
    let bar = crate::logging::progress_bar(
        batches.len() as u64,
        "attack [{bar:30}] {pos}/{len} batches ({elapsed}<{eta})",
    );
    let mut parts: [Vec<Tensor>; 5] = Default::default();
    let mut targets = Vec::new();
    let count = batches.len();
    for (b, s) in test.batches(batches).enumerate() {
        crate::interrupt::check()?;
        let s = s?.to(device);
        let inputs = seeded_inputs(pipeline, &s, config.seed, b, &oracle)?;
        let classes = test.num_classes();
        let clean = checked_logits(model, &s.images, classes)?;
        let adversarial = checked_logits(model, &inputs.images, classes)?;
        let cpu = |t: &Tensor| t.detach().to_device(Device::Cpu);
        for (part, t) in
            parts
                .iter_mut()
                .zip([&s.images, &inputs.images, &s.labels, &clean, &adversarial])
        {
            part.push(cpu(t));
        }
        if let Some(t) = &inputs.targets {
            targets.push(cpu(t));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if parts[0].is_empty() {
        bail!("the test set is empty: nothing to attack");
    }
    let [clean, adversarial, labels, logits_clean, logits_adversarial] =
        parts.map(|p| Tensor::cat(&p, 0));
    Ok(Attacked {
        predicted_clean: logits_clean.argmax(-1, false),
        predicted_adversarial: logits_adversarial.argmax(-1, false),
        targets: (targets.len() == count).then(|| Tensor::cat(&targets, 0)),
        clean: clean.to_kind(Kind::Float),
        adversarial: adversarial.to_kind(Kind::Float),
        labels,
        logits_clean: logits_clean.to_kind(Kind::Float),
        logits_adversarial: logits_adversarial.to_kind(Kind::Float),
    })
}

/// The file's metadata (strings): attack, budget, source, figures, class names.
fn metadata(
    args: &AttackArgs,
    threat: &ThreatModel,
    source: &Source,
    config: &RunConfig,
    result: &Attacked,
    class_names: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    let entries = [
        ("attack", args.attack.clone()),
        ("eps", threat.epsilon.to_string()),
        ("eps_given", args.eps.to_string()),
        ("norm", threat.norm.as_str().to_owned()),
        ("steps", threat.steps.to_string()),
        ("run", source.described.clone()),
        ("seed", config.seed.to_string()),
        ("samples", result.labels.size()[0].to_string()),
        (
            "clean_accuracy",
            result.accuracy(&result.predicted_clean).to_string(),
        ),
        (
            "robust_accuracy",
            result.accuracy(&result.predicted_adversarial).to_string(),
        ),
        ("targeted", result.targets.is_some().to_string()),
        ("class_names", serde_json::to_string(class_names)?),
        ("sat_version", env!("CARGO_PKG_VERSION").to_owned()),
    ];
    Ok(entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect())
}
