//! Logging to stderr (above any progress bars) and to the run's `log.txt`.
use indicatif::MultiProgress;
use log::{LevelFilter, Log, Metadata, Record};
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

struct Logger {
    level: LevelFilter,
    start: Instant,
    file: Mutex<Option<File>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();
static BARS: OnceLock<MultiProgress> = OnceLock::new();
/// This process's rank in a data-parallel run, or `usize::MAX` in one process.
static RANK: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Marks this process as rank `rank` of `world` (several): its lines start with
/// `[rank N]`, and a rank other than 0 logs only warnings and errors (unless `SAT_LOG` or
/// `RUST_LOG` says otherwise), which reach the run's `log.txt` too (see [`tee_to`]).
pub fn set_rank(rank: usize, world: usize) {
    if world > 1 {
        RANK.store(rank, Ordering::Relaxed);
        let explicit =
            std::env::var_os("SAT_LOG").is_some() || std::env::var_os("RUST_LOG").is_some();
        if rank > 0 && !explicit && log::max_level() > LevelFilter::Warn {
            log::set_max_level(LevelFilter::Warn);
        }
    }
}

/// `"[rank N] "` in a data-parallel run (see [`set_rank`]), else `""`.
pub fn rank_prefix() -> String {
    match RANK.load(Ordering::Relaxed) {
        usize::MAX => String::new(),
        r => format!("[rank {r}] "),
    }
}

/// The progress-bar container that log lines print above.
pub fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| {
        let bars = MultiProgress::new();
        sat_data::progress::attach(&bars);
        bars
    })
}

/// A progress bar of `len` steps drawn with `template` (indicatif's syntax; a constant
/// of the caller), added to [`bars`] so that log lines print above it.
pub fn progress_bar(len: u64, template: &'static str) -> indicatif::ProgressBar {
    bars();
    sat_data::progress::bar(len, template)
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
            && (metadata.target().starts_with("sat") || metadata.level() <= log::Level::Warn)
    }
    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let rank = rank_prefix();
        let line = format!(
            "[{:>8.2}s {:<5}] {rank}{}",
            self.start.elapsed().as_secs_f64(),
            record.level(),
            record.args()
        );
        if let Ok(mut file) = self.file.lock() {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
        if std::io::stderr().is_terminal() {
            let _ = bars().println(&line);
        } else {
            eprintln!("{line}");
        }
    }
    fn flush(&self) {
        if let Ok(mut file) = self.file.lock() {
            if let Some(f) = file.as_mut() {
                let _ = f.flush();
            }
        }
    }
}

/// Installs the logger; `SAT_LOG` or `RUST_LOG` (`error` … `trace`) overrides `verbose`.
pub fn init(verbose: u8) {
    let from_env = std::env::var("SAT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|v| v.parse().ok());
    let level = from_env.unwrap_or(match verbose {
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    });
    let logger = LOGGER.get_or_init(|| Logger {
        level,
        start: Instant::now(),
        file: Mutex::new(None),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Also writes log lines to `file` from now on.
pub fn tee_to(file: File) {
    if let Some(logger) = LOGGER.get() {
        if let Ok(mut slot) = logger.file.lock() {
            *slot = Some(file);
        }
    }
}
