//! `[model] arch` parsed and ranged, and the size of the model it names computed from
//! the name alone, so that an architecture too large for the machine is refused before
//! anything is allocated.
use crate::ModelError;
use std::ops::RangeInclusive;

/// `width`: channels of the first stage (hidden units of `mlp`; WRNs ignore it).
pub const WIDTH: RangeInclusive<i64> = 1..=1024;
/// Depth of `wrn-<depth>-<widen>` (also `6n + 4`): published WRNs go to 106.
pub const WRN_DEPTH: RangeInclusive<i64> = 10..=1000;
/// Widening factor of `wrn-<depth>-<widen>`: published WRNs go to 20.
pub const WRN_WIDEN: RangeInclusive<i64> = 1..=64;
/// Classes of a model's head.
pub const CLASSES: RangeInclusive<i64> = 1..=1_000_000;
/// Bytes of one parameter or buffer value (float32).
pub const BYTES_PER_VALUE: u128 = 4;

/// An architecture `[model] arch` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `small-cnn`.
    SmallCnn,
    /// `mlp`.
    Mlp,
    /// `resnet10`, `resnet18`, `resnet34`: basic blocks per stage.
    ResNet([usize; 4]),
    /// `resnet50`: bottleneck blocks per stage.
    Bottleneck([usize; 4]),
    /// `preact-resnet18`.
    PreActResNet18,
    /// `wrn-<depth>-<widen>`.
    Wrn {
        /// Layers, `6n + 4`.
        depth: i64,
        /// Widening factor.
        widen: i64,
    },
}

impl Arch {
    /// Parses and ranges `arch`: a name of [`crate::ARCHITECTURES`] or
    /// `wrn-<depth>-<widen>` with the depth in [`WRN_DEPTH`] (`6n + 4`) and the widening
    /// factor in [`WRN_WIDEN`].
    pub fn parse(arch: &str) -> Result<Self, ModelError> {
        if let Some(rest) = arch.strip_prefix("wrn-") {
            return Self::parse_wrn(arch, rest);
        }
        Ok(match arch {
            "small-cnn" => Self::SmallCnn,
            "mlp" => Self::Mlp,
            "resnet10" => Self::ResNet([1, 1, 1, 1]),
            "resnet18" => Self::ResNet([2, 2, 2, 2]),
            "resnet34" => Self::ResNet([3, 4, 6, 3]),
            "resnet50" => Self::Bottleneck([3, 4, 6, 3]),
            "preact-resnet18" => Self::PreActResNet18,
            other => return Err(ModelError::UnknownArch(other.to_string())),
        })
    }

    fn parse_wrn(arch: &str, rest: &str) -> Result<Self, ModelError> {
        let parsed = rest
            .split_once('-')
            .and_then(|(d, k)| Some((d.parse::<i64>().ok()?, k.parse::<i64>().ok()?)));
        let Some((depth, widen)) = parsed else {
            return Err(ModelError::Invalid(format!(
                "model arch `{}`: expected wrn-<depth>-<widen> with integers, e.g. wrn-28-10",
                crate::shorten(arch, 60)
            )));
        };
        let outside = |what: &str, v: i64, r: &RangeInclusive<i64>| {
            ModelError::Invalid(format!(
                "model arch `{arch}`: the {what} {v} is outside [{}, {}]",
                r.start(),
                r.end()
            ))
        };
        if !WRN_DEPTH.contains(&depth) {
            return Err(outside("depth", depth, &WRN_DEPTH));
        }
        if !WRN_WIDEN.contains(&widen) {
            return Err(outside("widening factor", widen, &WRN_WIDEN));
        }
        if (depth - 4) % 6 != 0 {
            return Err(ModelError::Invalid(format!(
                "wrn-{depth}-{widen}: depth must be 6n + 4 (10, 16, 22, 28, 34, 40, …)"
            )));
        }
        Ok(Self::Wrn { depth, widen })
    }

    /// Whether the architecture reads `width` (WRNs take theirs from the name).
    pub fn uses_width(self) -> bool {
        !matches!(self, Self::Wrn { .. })
    }

    /// The values the model holds (parameters and batch-norm statistics) with `width`
    /// and `classes`, counted as the builders allocate them.
    pub fn values(self, width: i64, classes: i64) -> u128 {
        let (w, k) = (width.max(0) as u128, classes.max(0) as u128);
        match self {
            Self::SmallCnn => {
                let cb = |i, o| conv(i, o, 3) + bn(o);
                cb(3, w)
                    + cb(w, w)
                    + cb(w, 2 * w)
                    + cb(2 * w, 2 * w)
                    + cb(2 * w, 4 * w)
                    + linear(4 * w, k)
            }
            Self::Mlp => linear(3 * 64, w) + linear(w, k),
            Self::ResNet(blocks) => resnet_values(blocks, w, k),
            Self::Bottleneck(blocks) => bottleneck_values(blocks, w, k),
            Self::PreActResNet18 => {
                conv(3, w, 3) + preact_values(w, &[w, 2 * w, 4 * w, 8 * w], 2, k)
            }
            Self::Wrn { depth, widen } => {
                let (n, f) = (((depth - 4) / 6) as u128, widen as u128);
                conv(3, 16, 3) + preact_values(16, &[16 * f, 32 * f, 64 * f], n, k)
            }
        }
    }
}

/// Checks `width` and `classes` against [`WIDTH`] and [`CLASSES`].
pub fn check_sizes(width: i64, classes: i64) -> Result<(), ModelError> {
    if !WIDTH.contains(&width) {
        return Err(ModelError::Invalid(format!(
            "model width {width} is outside [{}, {}]",
            WIDTH.start(),
            WIDTH.end()
        )));
    }
    if !CLASSES.contains(&classes) {
        return Err(ModelError::Invalid(format!(
            "{classes} classes is outside [{}, {}]",
            CLASSES.start(),
            CLASSES.end()
        )));
    }
    Ok(())
}

fn conv(c_in: u128, c_out: u128, k: u128) -> u128 {
    c_in * c_out * k * k
}

/// Weight, bias, running mean and running variance.
fn bn(c: u128) -> u128 {
    4 * c
}

fn linear(i: u128, o: u128) -> u128 {
    i * o + o
}

fn resnet_values(blocks: [usize; 4], w: u128, k: u128) -> u128 {
    let mut total = conv(3, w, 3) + bn(w);
    let mut c_in = w;
    for (stage, &count) in blocks.iter().enumerate() {
        let c_out = w << stage;
        for i in 0..count {
            let projected = (stage > 0 && i == 0) || c_in != c_out;
            total += conv(c_in, c_out, 3) + bn(c_out) + conv(c_out, c_out, 3) + bn(c_out);
            if projected {
                total += conv(c_in, c_out, 1) + bn(c_out);
            }
            c_in = c_out;
        }
    }
    total + linear(c_in, k)
}

fn bottleneck_values(blocks: [usize; 4], w: u128, k: u128) -> u128 {
    let mut total = conv(3, w, 7) + bn(w);
    let mut c_in = w;
    for (stage, &count) in blocks.iter().enumerate() {
        let mid = w << stage;
        let c_out = 4 * mid;
        for i in 0..count {
            total += conv(c_in, mid, 1) + bn(mid) + conv(mid, mid, 3) + bn(mid);
            total += conv(mid, c_out, 1) + bn(c_out);
            if (stage > 0 && i == 0) || c_in != c_out {
                total += conv(c_in, c_out, 1) + bn(c_out);
            }
            c_in = c_out;
        }
    }
    total + linear(c_in, k)
}

/// Pre-activation stages of `blocks` blocks each (the first stage at stride 1), then
/// the final batch norm and the head.
fn preact_values(c_in: u128, widths: &[u128], blocks: u128, k: u128) -> u128 {
    let mut total = 0;
    let mut c = c_in;
    for (stage, &w) in widths.iter().enumerate() {
        for i in 0..blocks {
            total += bn(c) + conv(c, w, 3) + bn(w) + conv(w, w, 3);
            if (stage > 0 && i == 0) || c != w {
                total += conv(c, w, 1);
            }
            c = w;
        }
    }
    total + bn(c) + linear(c, k)
}

/// Bytes of memory available to this process, as the kernel estimates it
/// (`MemAvailable` in `/proc/meminfo`); `None` where that is not known.
pub fn available_memory() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line
        .trim_start_matches("MemAvailable:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `bytes` for a message: `512 MiB`, `36.5 GiB`, `2.1 TiB`.
pub fn show_bytes(bytes: u128) -> String {
    let b = bytes as f64;
    let (unit, scale) = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)]
        .into_iter()
        .find(|(_, shift)| b >= (1u128 << shift) as f64)
        .unwrap_or(("bytes", 0));
    if scale == 0 {
        return format!("{bytes} bytes");
    }
    format!("{:.1} {unit}", b / (1u128 << scale) as f64)
}

/// Refuses a model of `values` values that does not fit in `available` bytes; `what`
/// names the model in the message.
pub fn check_fits(what: &str, values: u128, available: Option<u128>) -> Result<(), ModelError> {
    let bytes = values.saturating_mul(BYTES_PER_VALUE);
    match available {
        Some(available) if bytes > available => Err(ModelError::Invalid(format!(
            "{what}: its {values} parameters need {} (4 bytes each), more than the {} of memory available (MemAvailable)",
            show_bytes(bytes),
            show_bytes(available)
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};

    /// Values the builder allocates, counted from its variables.
    fn allocated(arch: &str, width: i64, classes: i64) -> u128 {
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = crate::build(&vs.root(), arch, width, classes).unwrap();
        vs.variables().values().map(|t| t.numel() as u128).sum()
    }

    #[test]
    fn the_count_from_the_name_is_what_the_builder_allocates() {
        for (arch, width, classes) in [
            ("small-cnn", 8, 5),
            ("small-cnn", 3, 2),
            ("mlp", 16, 10),
            ("resnet10", 4, 3),
            ("resnet18", 8, 10),
            ("resnet34", 4, 7),
            ("resnet50", 8, 11),
            ("preact-resnet18", 8, 10),
            ("wrn-10-1", 1, 10),
            ("wrn-16-2", 1, 4),
            ("wrn-28-1", 1, 100),
        ] {
            let counted = Arch::parse(arch).unwrap().values(width, classes);
            assert_eq!(counted, allocated(arch, width, classes), "{arch} {width}");
        }
    }

    #[test]
    fn absurd_depths_and_widths_are_refused_by_name() {
        for (arch, needle) in [
            (
                "wrn-28-100000",
                "the widening factor 100000 is outside [1, 64]",
            ),
            (
                "wrn-100000000-10",
                "the depth 100000000 is outside [10, 1000]",
            ),
            ("wrn-4-10", "the depth 4 is outside [10, 1000]"),
            ("wrn-28-0", "the widening factor 0 is outside [1, 64]"),
            ("wrn-27-10", "6n + 4"),
            (
                "wrn-99999999999999999999-10",
                "expected wrn-<depth>-<widen>",
            ),
            ("wrn-28", "expected wrn-<depth>-<widen>"),
        ] {
            let e = Arch::parse(arch).unwrap_err().to_string();
            assert!(e.contains(needle), "{arch}: {e}");
        }
        assert_eq!(
            Arch::parse("wrn-70-16").unwrap(),
            Arch::Wrn {
                depth: 70,
                widen: 16
            }
        );
        assert!(check_sizes(1025, 10)
            .unwrap_err()
            .to_string()
            .contains("1025 is outside [1, 1024]"));
        assert!(check_sizes(0, 10).is_err() && check_sizes(8, 0).is_err());
        // Refused before any allocation: `build` answers at once.
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(crate::build(&vs.root(), "wrn-28-100000", 1, 10).is_err());
        assert!(crate::build(&vs.root(), "small-cnn", 1 << 40, 10).is_err());
        assert!(vs.variables().is_empty());
    }

    #[test]
    fn the_deepest_wrn_in_range_builds_and_runs() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = crate::build(&vs.root(), "wrn-1000-1", 1, 3).unwrap();
        let x = tch::Tensor::rand([2, 3, 8, 8], (tch::Kind::Float, Device::Cpu));
        let y = model.forward_t(&x, true);
        assert_eq!(y.size(), vec![2, 3]);
        y.sum(tch::Kind::Float).backward();
    }

    #[test]
    fn the_largest_in_range_model_is_refused_by_the_memory_check() {
        // WRN-1000-64: about 5·10¹⁰ parameters, 200 GB in float32.
        let huge = Arch::parse("wrn-1000-64").unwrap().values(1, 10);
        assert!(huge > 40_000_000_000, "{huge}");
        let e = check_fits("wrn-1000-64", huge, Some(16 << 30))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("more than the 16.0 GiB of memory available"),
            "{e}"
        );
        let wrn_28_10 = Arch::parse("wrn-28-10").unwrap().values(1, 10);
        assert!(check_fits("wrn-28-10", wrn_28_10, Some(1 << 30)).is_ok());
        assert!(check_fits("wrn-1000-64", huge, None).is_ok());
        assert_eq!(show_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(show_bytes(100), "100 bytes");
    }
}
