//! The epoch loop: it only orchestrates — the batches of an epoch (order and
//! augmentation from their own random streams), one [`TrainingStep`] per batch, a
//! checkpoint and the metrics after every epoch, the evaluation at the end, a clean stop
//! on Ctrl-C.
use super::checkpoint::{self, Restored, WithinEpoch, CHECKPOINT_FILE, STATE_FILE};
use super::schedule::Schedule;
use super::step::{NonFiniteLoss, StepAt, StepOutput, TrainingStep};
use super::{build_network_for, load_datasets, mixed_precision, Network, Outcome};
use crate::config::{RunConfig, TrainConfig};
use crate::data::rng::{Purpose, SplitMix};
use crate::data::stream::EpochPlan;
use crate::data::{Data, Epoch as EpochBatches};
use crate::distributed::Ranks;
use crate::eval;
use crate::plugins::oracle::ModelOracle;
use crate::plugins::pipeline::Pipeline;
use crate::plugins::registry::Registry;
use crate::report::{write_atomic, EpochMetrics, Metrics, RunDir, RunStatus, TensorBoard};
use anyhow::{bail, Context};
use indicatif::ProgressBar;
use sat_core::{OracleAdapter, OracleRef};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tch::Device;

/// A run being trained, and what it records.
pub(super) struct Session<'a> {
    pub config: &'a RunConfig,
    pub registry: &'a Registry,
    pub run: &'a RunDir,
    pub device: Device,
    pub interrupted: &'a AtomicBool,
    pub metrics: &'a mut Metrics,
    /// This process among the ranks (one in a plain run): only rank 0 writes.
    pub ranks: &'a Ranks,
}

/// What one epoch needs besides the session.
struct Epoch<'a, 'o> {
    data: &'a Data,
    net: &'a Network,
    step: &'a mut TrainingStep,
    pipeline: &'a mut Pipeline,
    schedule: &'a Schedule,
    oracle: &'a OracleRef<'o>,
    /// This process's TensorBoard event file (rank 0, unless `[report] tensorboard = false`).
    board: Option<TensorBoard>,
}

/// What training starts from.
struct Start {
    train: Data,
    test: Data,
    net: Network,
    step: TrainingStep,
    pipeline: Pipeline,
    /// The first epoch to train (0-based; after the finished ones when resuming).
    first_epoch: u32,
    /// Where the first epoch resumes, when a mid-epoch state was restored.
    within: Option<WithinEpoch>,
}

/// How an epoch's steps ended.
enum Steps {
    /// Every batch ran.
    Finished(Totals),
    /// A stop request ended the epoch after `batches` finished batches (one process).
    Stopped { totals: Totals, batches: u32 },
}

/// A resumed run that could not start (its data, model, state file or components do not
/// fit the config given): the error's context, so the run's record can be left as it
/// was.
#[derive(Debug, thiserror::Error)]
#[error("resuming {} is refused", .0.display())]
pub(crate) struct RefusedResume(pub std::path::PathBuf);

/// Whether `error` carries a [`RefusedResume`] (attached as context).
pub(crate) fn is_refused_resume(error: &anyhow::Error) -> bool {
    error.downcast_ref::<RefusedResume>().is_some()
}

/// Running sums over an epoch's steps.
#[derive(Default, Clone, Copy)]
struct Totals {
    loss: f64,
    correct: i64,
    seen: i64,
}

impl Totals {
    fn add(&mut self, out: &StepOutput) {
        self.loss += out.loss * out.samples as f64;
        self.correct += out.correct;
        self.seen += out.samples;
    }
    fn message(&self, start: Instant) -> String {
        format!(
            "loss {:.3} acc {:.3} {:.0} img/s",
            self.loss / self.seen.max(1) as f64,
            self.correct as f64 / self.seen.max(1) as f64,
            self.seen as f64 / start.elapsed().as_secs_f64()
        )
    }
}

impl Session<'_> {
    /// Trains the remaining epochs (all, or those after the state file's with `resume`),
    /// then evaluates. A resumed run that cannot start (its data, model, state or
    /// components do not fit) fails with [`RefusedResume`] before it writes anything.
    pub fn train_and_evaluate(&mut self, resume: bool) -> anyhow::Result<Outcome> {
        let (config, t) = (self.config, &self.config.train);
        let start = match self.start(resume) {
            Ok(Some(start)) => start,
            Ok(None) => return self.record_interruption(),
            Err(e) if resume && !crate::interrupt::is_interrupted(&e) => {
                return Err(e.context(RefusedResume(self.run.path.clone())))
            }
            Err(e) => return Err(e),
        };
        let Start {
            train,
            test,
            net,
            mut step,
            mut pipeline,
            first_epoch,
            within,
        } = start;
        if resume && self.ranks.is_writer() {
            // The resume is accepted: only now does the run directory take the new
            // config (`--set`), so a refused one changes nothing.
            crate::interrupt::exclusive(|| {
                write_atomic(&self.run.file("config.toml"), config.to_toml().as_bytes())
            })
            .context("writing config.toml")?;
        }
        log_pipeline(&pipeline, t);
        let batches = crate::distributed::shard_len(train.len() as usize, self.ranks.world_size())
            .div_ceil(t.batch_size.max(1));
        let schedule = Schedule::new(t.schedule, t.lr, &t.milestones, t.gamma, t.epochs, batches);
        let adapter = OracleAdapter(ModelOracle {
            model: net.model.as_ref(),
            classes: train.num_classes() as u32,
        });
        let oracle = adapter.as_ref();
        let board = (config.report.tensorboard && self.ranks.is_writer())
            .then(|| TensorBoard::open(&self.run.path, first_epoch + 1))
            .transpose()
            .context(
                "creating a TensorBoard event file ([report] tensorboard = false turns them off)",
            )?;
        let mut epoch = Epoch {
            data: &train,
            net: &net,
            step: &mut step,
            pipeline: &mut pipeline,
            schedule: &schedule,
            oracle: &oracle,
            board,
        };
        for index in first_epoch..t.epochs {
            let resume_at = within.filter(|_| index == first_epoch);
            if !self.train_epoch(&mut epoch, index, resume_at)? {
                return self.record_interruption();
            }
        }
        // Every rank evaluates the model rank 0 checkpoints.
        self.ranks.broadcast_buffers(&net.vs)?;
        self.evaluate(net.model.as_ref(), &test)?;
        if let Some(board) = &mut epoch.board {
            board
                .evaluation(t.epochs, self.metrics)
                .context("writing the TensorBoard event file")?;
        }
        Ok(Outcome::Completed)
    }

    /// The data, the model (restored from the state file with `resume`), its training
    /// step and the pipeline; `None` when a stop request ended the data loading.
    fn start(&mut self, resume: bool) -> anyhow::Result<Option<Start>> {
        let (config, t) = (self.config, &self.config.train);
        let Some((train, test)) = self.load()? else {
            return Ok(None);
        };
        if config.model.torchscript.is_some() {
            bail!("[model] torchscript: a TorchScript model can be evaluated and attacked (`sat-host eval --config ...`), not trained here; use [model] arch");
        }
        let mut net = build_network_for(config, train.num_classes(), self.device, self.ranks)?;
        let amp = mixed_precision(t, self.device);
        let optimizer =
            super::optimizer::Optimizer::new(&net.vs, super::optimizer::Rule::from_config(t));
        let mut step = TrainingStep::new(optimizer, amp, self.ranks.gradient_sync());
        // Only rank 0 reads the state file; the others get its state by broadcast.
        let restored = if resume && self.ranks.is_writer() {
            self.resume(&mut net, &mut step)?
        } else {
            Restored {
                epochs_done: 0,
                within: None,
            }
        };
        if restored.within.is_some() && self.ranks.is_distributed() {
            bail!("{STATE_FILE} was saved part-way through epoch {} by one process: resume it with one process (a data-parallel run stops at epoch ends)", restored.epochs_done + 1);
        }
        let first_epoch = self
            .ranks
            .synchronize_state(&net.vs, &mut step, restored.epochs_done)?;
        self.metrics.epochs.truncate(first_epoch as usize);
        if self.ranks.is_distributed() {
            log::info!(
                "data-parallel: {} ranks × batch {} = global batch {}; {} of {} training images per rank per epoch",
                self.ranks.world_size(),
                t.batch_size,
                self.ranks.world_size() * t.batch_size,
                crate::distributed::shard_len(train.len() as usize, self.ranks.world_size()),
                train.len()
            );
        }
        let pipeline = Pipeline::for_training(self.registry, config)?;
        Ok(Some(Start {
            train,
            test,
            net,
            step,
            pipeline,
            first_epoch,
            within: restored.within,
        }))
    }

    /// The training and test sets, logged; `None` when a stop request ended the
    /// loading.
    fn load(&self) -> anyhow::Result<Option<(Data, Data)>> {
        let config = self.config;
        let loading = Instant::now();
        let (train, test) = match load_datasets(config) {
            Ok(sets) => sets,
            Err(e) if crate::interrupt::is_interrupted(&e) => {
                log::warn!(
                    "interrupted while loading dataset `{}` ({e:#}); no epoch ran in this process",
                    config.data.dataset
                );
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        log::info!(
            "dataset {}: {} training and {} test images, {} classes, on {:?} (loaded in {:.1} s, peak RSS {:.0} MiB)",
            config.data.dataset,
            train.len(),
            test.len(),
            train.num_classes(),
            self.device,
            loading.elapsed().as_secs_f64(),
            crate::report::process_status_mib("VmHWM")
        );
        Ok(Some((train, test)))
    }

    /// Records the run as interrupted (rank 0 writes `metrics.json`).
    fn record_interruption(&mut self) -> anyhow::Result<Outcome> {
        self.metrics.status = RunStatus::Interrupted;
        if self.ranks.is_writer() {
            crate::interrupt::exclusive(|| self.run.write_metrics(self.metrics))?;
        }
        Ok(Outcome::Interrupted)
    }

    /// Restores model, optimiser and loss scale from the state file; returns the
    /// finished epochs (whose figures are kept, later ones dropped) and where an
    /// interrupted epoch stopped.
    fn resume(&mut self, net: &mut Network, step: &mut TrainingStep) -> anyhow::Result<Restored> {
        let state_file = self.run.file(STATE_FILE);
        if !state_file.exists() {
            // Interrupted (or failed) before the first epoch finished: nothing to resume.
            self.metrics.epochs.clear();
            log::warn!(
                "no finished epoch in {} (no {STATE_FILE}): training starts again from epoch 1",
                self.run.path.display()
            );
            return Ok(Restored {
                epochs_done: 0,
                within: None,
            });
        }
        let restored = checkpoint::load_state(
            &mut net.vs,
            &mut step.optimizer,
            &mut step.scaler,
            &state_file,
        )?;
        checkpoint::check_resume(
            &restored,
            self.config.train.epochs,
            self.metrics.epochs.len(),
            &state_file,
        )?;
        let done = restored.epochs_done;
        self.metrics.epochs.truncate(done as usize);
        match restored.within {
            Some(w) => log::info!(
                "resuming epoch {} of {} after its batch {} from {}",
                done + 1,
                self.config.train.epochs,
                w.batches,
                state_file.display()
            ),
            None => log::info!(
                "resuming after epoch {done} of {} from {}",
                self.config.train.epochs,
                state_file.display()
            ),
        }
        Ok(restored)
    }

    /// Trains epoch `index` (0-based) and records it (checkpoint, metrics, state);
    /// `false` when Ctrl-C stopped it.
    fn train_epoch(
        &mut self,
        e: &mut Epoch<'_, '_>,
        index: u32,
        resume_at: Option<WithinEpoch>,
    ) -> anyhow::Result<bool> {
        let (config, ranks) = (self.config, self.ranks);
        let first = resume_at.map_or(0, |w| w.batches as usize);
        let plan = EpochPlan {
            batch_size: config.train.batch_size,
            seed: config.seed,
            epoch: index,
            rank: ranks.rank(),
            world: ranks.world_size(),
            start_batch: first,
        };
        let mut batches = e.data.epoch(&config.data, plan);
        if let Some(w) = resume_at.filter(|w| w.of as usize != batches.batch_count()) {
            bail!(
                "{STATE_FILE} stopped epoch {} after batch {} of {}, but this config makes {} batches: resume with the run's data and batch size",
                index + 1,
                w.batches,
                w.of,
                batches.batch_count()
            );
        }
        let bar = if ranks.is_writer() {
            progress_bar(batches.batch_count() as u64, index, config.train.epochs)
        } else {
            ProgressBar::hidden()
        };
        bar.set_position(first as u64);
        let _ = ranks.take_sync_time();
        if let Some(i) = e.pipeline.epoch_source(index) {
            let name = &e.pipeline.sources[i].origin.name;
            log::info!("epoch {}: saliency source `{name}`", index + 1);
        }
        // A resumed epoch's figures cover it whole: its sums and time so far count.
        let done_before = resume_at.map_or(Duration::ZERO, |w| Duration::from_secs_f64(w.seconds));
        let start = Instant::now()
            .checked_sub(done_before)
            .unwrap_or_else(Instant::now);
        let totals = resume_at.map_or_else(Totals::default, |w| Totals {
            loss: w.loss,
            correct: w.correct,
            seen: w.seen,
        });
        match self.run_steps(e, index, &mut batches, &bar, (start, first, totals))? {
            Steps::Finished(totals) => {
                bar.finish();
                self.close_epoch(e, index, totals, start, &batches)
            }
            Steps::Stopped {
                totals,
                batches: done,
            } => {
                let of = batches.batch_count() as u64;
                self.save_within(e, index, totals, (done, of), start)?;
                Ok(false)
            }
        }
    }

    /// Records where a single-process epoch stopped (a mid-epoch state file: the weights
    /// and optimiser after `batches` batches and their sums), so `--resume` continues at
    /// the next batch; the checkpoint stays the last finished epoch's. Nothing when no
    /// batch finished.
    fn save_within(
        &self,
        e: &Epoch<'_, '_>,
        index: u32,
        totals: Totals,
        (batches, per_epoch): (u32, u64),
        start: Instant,
    ) -> anyhow::Result<()> {
        if batches == 0 || !self.ranks.is_writer() || self.ranks.is_distributed() {
            return Ok(());
        }
        let within = WithinEpoch {
            batches,
            of: per_epoch as u32,
            loss: totals.loss,
            correct: totals.correct,
            seen: totals.seen,
            seconds: start.elapsed().as_secs_f64(),
        };
        let path = self.run.file(STATE_FILE);
        crate::interrupt::exclusive(|| {
            checkpoint::save_state(
                &e.net.vs,
                &e.step.optimizer,
                &e.step.scaler,
                index,
                Some(&within),
                &path,
            )
        })
        .context("recording where the epoch stopped")?;
        log::warn!(
            "epoch {} stopped after batch {batches}: --resume continues from batch {}",
            index + 1,
            batches + 1
        );
        Ok(())
    }

    /// The steps of epoch `index` over `batches` from batch `first` on, adding to
    /// `totals`; [`Steps::Stopped`] when Ctrl-C stopped a single-process run.
    fn run_steps(
        &self,
        e: &mut Epoch<'_, '_>,
        index: u32,
        batches: &mut EpochBatches<'_>,
        bar: &ProgressBar,
        (start, first, mut totals): (Instant, usize, Totals),
    ) -> anyhow::Result<Steps> {
        let (config, epochs) = (self.config, self.config.train.epochs);
        // Per-batch draws (mixing coin, saliency source) are the same on every rank: a
        // rank's batch b is its part of the global batch b. libtorch's generator (what
        // plugins still draw from it) is seeded per (seed, epoch, rank, batch). Both are
        // keyed by the batch, so an epoch resumed at batch b draws what it would have.
        let draws_key = SplitMix::stream(config.seed, Purpose::Draws, index).next_u64();
        let torch_key = self.ranks.torch_seed(config.seed, Purpose::Attacks, index) as u64;
        let per_epoch = batches.batch_count() as u64;
        // In a data-parallel run Ctrl-C is agreed on before every batch (and at the end
        // of the epoch, in close_epoch), so no rank leaves the others waiting in a
        // collective; in one process it stops the epoch at once: between batches, or
        // inside one when the attack (refused by the oracle) or the data loader stopped.
        let single = !self.ranks.is_distributed();
        let stopped = |err: &anyhow::Error| single && crate::interrupt::is_interrupted(err);
        for (i, samples) in batches.by_ref().enumerate() {
            let b = first + i;
            let stop = || stopped_in(bar, index, totals, b as u32, per_epoch);
            let flag = self.interrupted.load(Ordering::SeqCst);
            if single && flag {
                return Ok(stop());
            }
            // Data-parallel: the ranks agree on a stop before every batch (one small sum),
            // so a signal to any of them stops all within a step, none left waiting.
            if !single && self.ranks.sum(&[f64::from(u8::from(flag))], self.device)?[0] > 0.0 {
                return Ok(stop());
            }
            let mut draws = SplitMix::new(draws_key, b as u64);
            tch::manual_seed((SplitMix::new(torch_key, b as u64).next_u64() >> 1) as i64);
            let global_step = index as u64 * per_epoch + b as u64;
            let at = StepAt {
                epoch: index,
                epochs,
                global_step,
                lr: e.schedule.rate(global_step as usize),
            };
            let samples = match samples.map_err(anyhow::Error::from) {
                Ok(samples) => samples.to(self.device),
                Err(err) if stopped(&err) => return Ok(stop()),
                Err(err) => {
                    return Err(
                        err.context(format!("reading the training data in epoch {}", index + 1))
                    )
                }
            };
            // DDP's broadcast_buffers: every rank's BatchNorm statistics are rank 0's.
            self.ranks
                .broadcast_buffers(&e.net.vs)
                .map_err(|err| self.explain(err, index))?;
            let model = e.net.model.as_ref();
            let out = match e
                .step
                .run(model, e.pipeline, &samples, at, e.oracle, &mut draws)
            {
                Ok(out) => out,
                Err(err) if stopped(&err) => return Ok(stop()),
                Err(err) => {
                    bar.abandon_with_message("stopped");
                    return Err(self.explain(err, index));
                }
            };
            totals.add(&out);
            bar.set_message(totals.message(start));
            bar.inc(1);
        }
        Ok(Steps::Finished(totals))
    }

    /// Sums the epoch's totals over the ranks, records its figures, writes the
    /// checkpoint; `false` when a rank's Ctrl-C stops the run here.
    fn close_epoch(
        &mut self,
        e: &mut Epoch<'_, '_>,
        index: u32,
        mut totals: Totals,
        start: Instant,
        batches: &EpochBatches<'_>,
    ) -> anyhow::Result<bool> {
        let ranks = self.ranks;
        let sync = ranks.take_sync_time();
        let stop = if ranks.is_distributed() {
            // One sum of the epoch's totals (and of the ranks' Ctrl-C flags).
            let flag = f64::from(u8::from(self.interrupted.load(Ordering::SeqCst)));
            let all = ranks.sum(
                &[totals.loss, totals.correct as f64, totals.seen as f64, flag],
                self.device,
            )?;
            totals.loss = all[0];
            totals.correct = all[1] as i64;
            totals.seen = all[2] as i64;
            all[3] > 0.0
        } else {
            false
        };
        let mut figures = epoch_metrics(index, &totals, start, batches);
        if let Some((seconds, calls)) = sync {
            figures.allreduce_seconds = Some(seconds);
            log::info!(
                "epoch {}: gradient all-reduce {:.2} ms per step ({calls} steps), {:.1}% of the epoch's time",
                index + 1,
                1e3 * seconds / calls.max(1) as f64,
                100.0 * seconds / figures.seconds.max(1e-9)
            );
        }
        log_epoch(&figures, self.config.train.epochs);
        self.metrics.epochs.push(figures);
        if ranks.is_writer() {
            let (step, vs) = (&*e.step, &e.net.vs);
            // Checkpoint, metrics and state as one: a second Ctrl-C waits for them.
            crate::interrupt::exclusive(|| {
                checkpoint::save_epoch(
                    self.run,
                    vs,
                    &step.optimizer,
                    &step.scaler,
                    index + 1,
                    self.metrics,
                )
            })?;
        }
        if let (Some(board), Some(figures)) = (&mut e.board, self.metrics.epochs.last()) {
            let lr = e.schedule.rate(index as usize * batches.batch_count());
            board
                .epoch(figures, lr)
                .context("writing the TensorBoard event file")?;
        }
        if stop {
            log::warn!(
                "interrupted during epoch {}; its checkpoint is kept",
                index + 1
            );
            return Ok(false);
        }
        Ok(true)
    }

    /// A step's error, with the epoch and the last good checkpoint for a non-finite loss.
    fn explain(&self, err: anyhow::Error, index: u32) -> anyhow::Error {
        let Some(NonFiniteLoss(value, who)) = err.downcast_ref::<NonFiniteLoss>() else {
            return err;
        };
        let checkpoint = self.run.file(CHECKPOINT_FILE);
        anyhow::anyhow!(
            "the training loss became {value} in epoch {} ({who}; lower [train] lr?); the last good checkpoint is {}",
            index + 1,
            if checkpoint.exists() { checkpoint.display().to_string() } else { "none (first epoch)".into() }
        )
    }

    /// Evaluates the trained model and records the run as completed.
    fn evaluate(&mut self, model: &dyn tch::nn::ModuleT, test: &Data) -> anyhow::Result<()> {
        let evaluation = eval::evaluate(
            model,
            test,
            self.config,
            self.registry,
            self.device,
            self.ranks,
        )?;
        evaluation.record(self.metrics);
        self.metrics.status = RunStatus::Completed;
        if self.ranks.is_writer() {
            crate::interrupt::exclusive(|| self.run.write_metrics(self.metrics))?;
        }
        Ok(())
    }
}

/// Says that epoch `index` (0-based) stopped on a signal, and what is kept; `None`, the
/// stopped epoch's totals.
/// The end of an epoch stopped by a signal before its batch `batches` (0-based) of
/// `count`: logged, with the sums of the batches that ran.
fn stopped_in(bar: &ProgressBar, index: u32, totals: Totals, batches: u32, count: u64) -> Steps {
    bar.abandon_with_message("interrupted");
    let kept = if index == 0 {
        "no epoch has finished, so no checkpoint is written".to_string()
    } else {
        format!("the checkpoint of epoch {index} is kept")
    };
    log::warn!(
        "interrupted in epoch {} after {batches} of {count} batches; {kept}",
        index + 1
    );
    Steps::Stopped { totals, batches }
}

/// The figures of epoch `index` (0-based), and a warning when the step waited for
/// data for more than a tenth of the epoch.
fn epoch_metrics(
    index: u32,
    totals: &Totals,
    start: Instant,
    batches: &EpochBatches<'_>,
) -> EpochMetrics {
    let seconds = start.elapsed().as_secs_f64();
    let seen = totals.seen.max(1) as f64;
    let wait = batches.waited().as_secs_f64() / seconds.max(1e-9);
    if wait > 0.1 && matches!(batches, EpochBatches::Shards(_)) {
        log::warn!(
            "epoch {}: the step waited for data {:.0}% of the time; more [data] workers (or a smaller [data] image_size) would help",
            index + 1,
            100.0 * wait
        );
    }
    let skipped = batches.skipped() as u64;
    if skipped > 0 {
        log::warn!(
            "epoch {}: {skipped} corrupt samples were skipped",
            index + 1
        );
    }
    EpochMetrics {
        epoch: index + 1,
        train_loss: totals.loss / seen,
        train_accuracy: totals.correct as f64 / seen,
        images_per_sec: totals.seen as f64 / seconds,
        seconds,
        rss_mib: crate::report::resident_mib(),
        data_digest: Some(batches.digest()),
        allreduce_seconds: None,
        data_wait_share: Some(wait),
        skipped_samples: (skipped > 0).then_some(skipped),
    }
}

fn log_epoch(e: &EpochMetrics, epochs: u32) {
    log::info!(
        "epoch {}/{}: loss {:.4}, train accuracy {:.4}, {:.0} images/s, {:.1} s (data wait {:.1}%), RSS {:.0} MiB",
        e.epoch,
        epochs,
        e.train_loss,
        e.train_accuracy,
        e.images_per_sec,
        e.seconds,
        100.0 * e.data_wait_share.unwrap_or(0.0),
        e.rss_mib
    );
}

/// The progress bar of epoch `index` (0-based) of `epochs`, `len` batches long.
fn progress_bar(len: u64, index: u32, epochs: u32) -> ProgressBar {
    let bar = crate::logging::progress_bar(
        len,
        "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})",
    );
    bar.set_prefix(format!("{}/{}", index + 1, epochs));
    bar
}

/// Says how the training inputs and the loss are made.
fn log_pipeline(pipeline: &Pipeline, t: &TrainConfig) {
    let inputs = match &pipeline.attack {
        Some(a) => format!(
            "inputs from attack `{}` ({}, eps {:.5}){}",
            a.origin.name,
            a.threat.norm.as_str(),
            a.threat.epsilon,
            match &pipeline.mix {
                Some((m, p)) => format!(", or `{}` with probability {p}", m.origin.name),
                None => String::new(),
            },
        ),
        None => "clean inputs (no attack)".into(),
    };
    let saliency = if pipeline.uses_saliency() {
        format!(", saliency from {}", t.saliency.join(", "))
    } else {
        String::new()
    };
    log::info!("training: {inputs}, objective `{}`{saliency}", t.objective);
    if !t.saliency.is_empty() && !pipeline.uses_saliency() {
        log::warn!(
            "saliency sources are configured but neither the attack nor the objective uses them"
        );
    }
}
