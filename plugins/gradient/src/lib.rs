//! Saliency from a teacher model's gradients, as one plugin library: `gradient`,
//! `guided-backprop`, `smoothgrad`, `integrated-gradients`, `gradcam++` and
//! `guided-gradcam++`.
//!
//! The teacher is the model being trained (`teacher = "self"`, through the host's
//! oracle), a checkpoint of this project (`teacher = "runs/x/checkpoint.safetensors"`
//! with its `arch` and `width`), or a TorchScript file (`teacher = "model.pt"`).
//! Guided backprop and Grad-CAM++ need to see the teacher's ReLUs, so they need a
//! checkpoint teacher. Maps are taken for one class per sample: the label
//! (`target = "label"`) or the teacher's prediction (`"predicted"`).

pub mod gradcam;
pub mod methods;
pub mod teacher;

sat_core::export_plugin!();

use sat_core::PluginError;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How a gradient-type attribution becomes a map in `[−1, 1]`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// `sign(a)`: −1, 0 or +1 per pixel and channel.
    Sign,
    /// `a / max|a|` per sample.
    Normalized,
    /// `|a| / max|a|` per sample, in `[0, 1]`.
    Abs,
}

impl Output {
    /// Applies the transform to attributions `[N, C, H, W]`.
    pub fn apply(self, a: &Tensor) -> Result<Tensor, PluginError> {
        let per_sample_max = |t: &Tensor| -> Result<Tensor, PluginError> {
            let n = t.size()[0];
            Ok(t.f_abs()?
                .f_reshape([n, -1])?
                .f_amax([1i64].as_slice(), false)?
                .f_clamp_min(1e-12)?
                .f_reshape([n, 1, 1, 1])?)
        };
        Ok(match self {
            Output::Sign => a.f_sign()?,
            Output::Normalized => a.f_div(&per_sample_max(a)?)?,
            Output::Abs => a.f_abs()?.f_div(&per_sample_max(a)?)?,
        }
        .f_to_kind(Kind::Float)?)
    }
}

/// Which class each sample's map explains.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The sample's label.
    Label,
    /// The teacher's predicted class.
    Predicted,
}

/// The ranges of the keys that size a source's work or its teacher's memory, checked
/// when the source is made. [`ranges::RANGES`] is the one source: the checks look
/// their bounds up in it, and README.md's table is [`ranges::table`] (a unit test
/// compares them).
pub mod ranges {
    use sat_core::PluginError;
    use sat_models::arch;
    use std::ops::RangeInclusive;

    /// Most noisy copies (SmoothGrad) or path points (Integrated Gradients) per image.
    pub const MAX_SAMPLES: i64 = 10_000;
    /// Most path points per teacher call (the host's largest batch).
    pub const MAX_BATCH: i64 = 65_536;

    /// Every source of this library.
    pub const SOURCES: &[&str] = &[
        "gradient",
        "guided-backprop",
        "smoothgrad",
        "integrated-gradients",
        "gradcam++",
        "guided-gradcam++",
    ];

    /// One row: the sources, the key, its range, a note.
    pub type Row = (
        &'static [&'static str],
        &'static str,
        RangeInclusive<i64>,
        &'static str,
    );

    /// Every sized key of this library's sources and its range.
    pub const RANGES: &[Row] = &[
        (&["smoothgrad"], "samples", 1..=MAX_SAMPLES, ""),
        (&["integrated-gradients"], "steps", 1..=MAX_SAMPLES, ""),
        (&["integrated-gradients"], "batch_size", 1..=MAX_BATCH, ""),
        (SOURCES, "width", arch::WIDTH, " (a checkpoint teacher)"),
        (
            SOURCES,
            "classes",
            arch::CLASSES,
            " when set (a checkpoint teacher)",
        ),
    ];

    /// The range of `source`'s `key`.
    ///
    /// # Panics
    /// If [`RANGES`] has no row for it (a bug the unit tests find).
    pub fn range(source: &str, key: &str) -> RangeInclusive<i64> {
        RANGES
            .iter()
            .find(|(sources, k, _, _)| *k == key && sources.contains(&source))
            .map(|(_, _, r, _)| r.clone())
            .unwrap_or_else(|| panic!("no range for [{source}] {key} in ranges::RANGES"))
    }

    /// Checks each `(key, value)` of `source` against its range.
    pub fn check(source: &str, values: &[(&str, i64)]) -> Result<(), PluginError> {
        for &(key, v) in values {
            let r = range(source, key);
            if !r.contains(&v) {
                return Err(PluginError::config(format!(
                    "[{source}] {key} = {v} is outside [{}, {}]",
                    r.start(),
                    r.end()
                )));
            }
        }
        Ok(())
    }

    /// Checks the teacher keys of `source`: for a checkpoint teacher, its `arch` (as
    /// `[model] arch`), `width` and `classes`, before anything is loaded.
    pub fn check_teacher(
        source: &str,
        c: &crate::teacher::TeacherConfig,
    ) -> Result<(), PluginError> {
        let script = [".pt", ".ts", ".jit"]
            .iter()
            .any(|e| c.teacher.ends_with(e));
        if c.teacher == "self" || script {
            return Ok(());
        }
        sat_models::Arch::parse(&c.arch)
            .map_err(|e| PluginError::config(format!("[{source}] arch: {e}")))?;
        check(source, &[("width", c.width)])?;
        match c.classes {
            Some(classes) => check(source, &[("classes", classes)]),
            None => Ok(()),
        }
    }

    /// `n` with groups of three digits from 10 000 up.
    fn spaced(n: i64) -> String {
        let n = n.to_string();
        if n.len() <= 4 {
            return n;
        }
        let mut out = String::new();
        for (i, ch) in n.chars().enumerate() {
            if i > 0 && (n.len() - i).is_multiple_of(3) {
                out.push(' ');
            }
            out.push(ch);
        }
        out
    }

    /// [`RANGES`] as README.md's Markdown table.
    pub fn table() -> String {
        let mut text = String::from("| source | key | valid values |\n|---|---|---|\n");
        for (sources, key, r, note) in RANGES {
            let names = if *sources == SOURCES {
                "every source".to_string()
            } else {
                let ticked: Vec<String> = sources.iter().map(|c| format!("`{c}`")).collect();
                ticked.join(", ")
            };
            text += &format!(
                "| {names} | `{key}` | {}–{}{note} |\n",
                spaced(*r.start()),
                spaced(*r.end())
            );
        }
        text += &format!(
            "| every source | `arch` | as `model.arch`: WRN depth {}–{}, widening factor {}–{} (a checkpoint teacher) |\n",
            arch::WRN_DEPTH.start(),
            arch::WRN_DEPTH.end(),
            arch::WRN_WIDEN.start(),
            arch::WRN_WIDEN.end()
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sat_core::component::Configurable;
    use sat_core::{testing::LinearModel, Batch, Oracle, Phase, SaliencySource};
    use tch::{nn, Device};

    #[test]
    fn every_component_builds_from_its_defaults() {
        assert_eq!(sat_core::check_registrations(), Ok(6));
    }

    /// A small CNN teacher with 3 classes saved as a checkpoint in `dir`.
    fn teacher_file(dir: &std::path::Path) -> String {
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = sat_models::build(&vs.root(), "small-cnn", 4, 3).unwrap();
        let path = dir.join("teacher.safetensors");
        vs.save(&path).unwrap();
        path.display().to_string()
    }

    fn batch_of(n: i64) -> (Tensor, Tensor) {
        let x = Tensor::rand([n, 3, 16, 16], (Kind::Float, Device::Cpu));
        let y = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3);
        (x, y)
    }

    fn config<C: serde::de::DeserializeOwned>(name: &str, text: &str) -> C {
        sat_core::parse_config(name, text).unwrap()
    }

    #[test]
    fn integrated_gradients_are_complete() {
        let dir = tempfile::tempdir().unwrap();
        let teacher = teacher_file(dir.path());
        let text = format!(
            "teacher = \"{teacher}\"\narch = \"small-cnn\"\nwidth = 4\nclasses = 3\nsteps = 256\nbatch_size = 100\nbaseline = 0.0"
        );
        let mut ig =
            methods::IntegratedGradients::from_config(config("integrated-gradients", &text))
                .unwrap();
        let oracle = LinearModel::random(3, 3 * 16 * 16, 1).oracle();
        let oracle_ref = oracle.as_ref();
        let (x, y) = batch_of(3);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Training);
        let attributions = ig.attributions(&batch, Oracle::new(&oracle_ref)).unwrap();
        // f(x) − f(0) for the target logit, from the same teacher.
        let vs = {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let model = sat_models::build(&vs.root(), "small-cnn", 4, 3).unwrap();
            vs.load(&teacher).unwrap();
            (vs, model)
        };
        let f = |t: &Tensor| {
            tch::no_grad(|| vs.1.forward_t(t, false))
                .gather(1, &y.unsqueeze(1), false)
                .squeeze_dim(1)
        };
        let expected = f(&x) - f(&x.zeros_like());
        let got = attributions.sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float);
        let err = (&got - &expected).abs();
        // Midpoint rule with 256 steps on a piecewise-linear network: within 1 % + 1e-4.
        let bound = expected.abs() * 0.01 + 1e-4;
        assert!(
            bool::try_from(err.le_tensor(&bound).all()).unwrap(),
            "sums {got:?} vs f(x) − f(x') {expected:?}"
        );
    }

    #[test]
    fn smoothgrad_with_zero_sigma_is_the_gradient_and_self_teacher_uses_the_oracle() {
        let oracle = LinearModel::random(3, 3 * 16 * 16, 2);
        let weight = oracle.weight.copy();
        let oracle = oracle.oracle();
        let oracle_ref = oracle.as_ref();
        let (x, y) = batch_of(4);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Training);
        let mut sg =
            methods::SmoothGrad::from_config(config("smoothgrad", "sigma = 0.0\nsamples = 3"))
                .unwrap();
        let smooth = sg.attributions(&batch, Oracle::new(&oracle_ref)).unwrap();
        // The linear model's logit gradient is its weight row for the label.
        let rows = weight.index_select(0, &y).reshape([4, 3, 16, 16]);
        assert!(smooth.allclose(&rows, 1e-5, 1e-6, false));
        let mut g = methods::Gradient::from_config(config("gradient", "")).unwrap();
        let map = g.saliency(&batch, Oracle::new(&oracle_ref)).unwrap();
        assert!(map.equal(&rows.sign()));
        let mut noisy =
            methods::SmoothGrad::from_config(config("smoothgrad", "sigma = 0.3")).unwrap();
        // Linear model: noise does not change the gradient either.
        let n = noisy
            .attributions(&batch, Oracle::new(&oracle_ref))
            .unwrap();
        assert!(n.allclose(&rows, 1e-5, 1e-6, false));
    }

    #[test]
    fn gradcam_is_non_negative_image_sized_and_needs_a_checkpoint_teacher() {
        let dir = tempfile::tempdir().unwrap();
        let teacher = teacher_file(dir.path());
        let oracle = LinearModel::random(3, 3 * 16 * 16, 3).oracle();
        let oracle_ref = oracle.as_ref();
        let (x, y) = batch_of(5);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Training);
        let text = format!("teacher = \"{teacher}\"\nwidth = 4\nclasses = 3\noutput = \"unit\"");
        let mut cam = gradcam::GradCamPP::from_config(config("gradcam++", &text)).unwrap();
        let map = cam.saliency(&batch, Oracle::new(&oracle_ref)).unwrap();
        assert_eq!(map.size(), vec![5, 1, 16, 16]);
        assert!(map.min().double_value(&[]) >= 0.0);
        assert!(map.max().double_value(&[]) <= 1.0);
        let text = format!("teacher = \"{teacher}\"\nwidth = 4\nclasses = 3\nlayer = 0");
        let mut first = gradcam::GradCamPP::from_config(config("gradcam++", &text)).unwrap();
        let centred = first.saliency(&batch, Oracle::new(&oracle_ref)).unwrap();
        assert!(centred.min().double_value(&[]) >= -1.0 && centred.max().double_value(&[]) <= 1.0);
        let text = format!("teacher = \"{teacher}\"\nwidth = 4\nclasses = 3\nlayer = 9");
        let mut bad = gradcam::GradCamPP::from_config(config("gradcam++", &text)).unwrap();
        let e = bad
            .saliency(&batch, Oracle::new(&oracle_ref))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layer 9: the teacher has 5 spatial ReLU layers"),
            "{e}"
        );
        let mut own = gradcam::GradCamPP::from_config(config("gradcam++", "")).unwrap();
        let e = own
            .saliency(&batch, Oracle::new(&oracle_ref))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs to see the teacher's ReLUs"), "{e}");
        let text = format!("teacher = \"{teacher}\"\nwidth = 4\nclasses = 3");
        let mut ggc =
            gradcam::GuidedGradCamPP::from_config(config("guided-gradcam++", &text)).unwrap();
        let m = ggc.saliency(&batch, Oracle::new(&oracle_ref)).unwrap();
        assert_eq!(m.size(), vec![5, 3, 16, 16]);
        let mut gb =
            methods::GuidedBackprop::from_config(config("guided-backprop", &text)).unwrap();
        let g = gb.saliency(&batch, Oracle::new(&oracle_ref)).unwrap();
        // Where Grad-CAM++ is positive, guided Grad-CAM++ keeps guided backprop's sign.
        let agree = m.ne(0.0).logical_and(&m.sign().ne_tensor(&g));
        assert_eq!(agree.sum(Kind::Int64).int64_value(&[]), 0);
    }

    /// Runs only where CUDA is present (the CI machine has none; it prints why it
    /// returns early): every source gives the same map on the GPU as on the CPU.
    #[test]
    fn cuda_and_cpu_give_the_same_maps() {
        if !tch::Cuda::is_available() {
            eprintln!("cuda_and_cpu_give_the_same_maps: no CUDA device, nothing to compare");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let teacher = teacher_file(dir.path());
        let (x, y) = batch_of(4);
        let common =
            format!("teacher = \"{teacher}\"\nwidth = 4\nclasses = 3\noutput = \"normalized\"");
        for (name, extra) in [
            ("gradient", ""),
            ("guided-backprop", ""),
            ("smoothgrad", "sigma = 0.0\nsamples = 2"),
            ("integrated-gradients", "steps = 8"),
        ] {
            let text = format!("{common}\n{extra}");
            let make = || -> Box<dyn SaliencySource> {
                match name {
                    "gradient" => {
                        Box::new(methods::Gradient::from_config(config(name, &text)).unwrap())
                    }
                    "guided-backprop" => {
                        Box::new(methods::GuidedBackprop::from_config(config(name, &text)).unwrap())
                    }
                    "smoothgrad" => {
                        Box::new(methods::SmoothGrad::from_config(config(name, &text)).unwrap())
                    }
                    _ => Box::new(
                        methods::IntegratedGradients::from_config(config(name, &text)).unwrap(),
                    ),
                }
            };
            let mut maps = Vec::new();
            for device in [Device::Cpu, Device::Cuda(0)] {
                let oracle = LinearModel::random(3, 3 * 16 * 16, 6).oracle();
                let oracle_ref = oracle.as_ref();
                let (xd, yd) = (x.to_device(device), y.to_device(device));
                let batch = Batch::new(&xd, &yd, 0, 1, Phase::Training);
                maps.push(
                    make()
                        .saliency(&batch, Oracle::new(&oracle_ref))
                        .unwrap()
                        .to_device(Device::Cpu),
                );
            }
            let diff = (&maps[0] - &maps[1]).abs().max().double_value(&[]);
            assert!(diff < 1e-3, "{name}: CPU and CUDA maps differ by {diff}");
        }
    }

    #[test]
    fn a_missing_or_mismatched_teacher_is_a_config_error() {
        let oracle = LinearModel::random(3, 3 * 16 * 16, 4).oracle();
        let oracle_ref = oracle.as_ref();
        let (x, y) = batch_of(2);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Training);
        let mut g = methods::GuidedBackprop::from_config(config(
            "guided-backprop",
            "teacher = \"nope.safetensors\"",
        ))
        .unwrap();
        let e = g
            .saliency(&batch, Oracle::new(&oracle_ref))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.safetensors: no such file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let teacher = teacher_file(dir.path());
        let text = format!("teacher = \"{teacher}\"\narch = \"resnet10\"\nwidth = 4\nclasses = 3");
        let mut g = methods::GuidedBackprop::from_config(config("guided-backprop", &text)).unwrap();
        let e = g
            .saliency(&batch, Oracle::new(&oracle_ref))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is it a checkpoint of arch `resnet10`"), "{e}");
    }

    #[test]
    fn the_readme_table_of_ranges_is_the_one_the_checks_use() {
        let begin = "<!-- BEGIN ranges: sat-plugin-gradient (plugins/gradient/src/lib.rs; its test ranges::table) -->";
        let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let readme = std::fs::read_to_string(readme).unwrap();
        let section = readme
            .split_once(begin)
            .and_then(|(_, after)| after.split_once("<!-- END ranges"))
            .map(|(section, _)| section.trim().to_string() + "\n");
        let expected = ranges::table();
        assert!(
            section.as_deref() == Some(expected.as_str()),
            "README.md's table of saliency ranges differs from ranges::table(); between\n{begin}\nand <!-- END ranges --> it should read:\n\n{expected}"
        );
    }

    /// Each source checks its sized keys (and a checkpoint teacher's) when it is made.
    #[test]
    fn every_source_refuses_its_sized_keys_out_of_range() {
        use sat_core::{component::create, ComponentKind};
        let make = |source: &str, table: &str| create(ComponentKind::Saliency, source, table);
        for (sources, key, r, _) in ranges::RANGES {
            for source in sources.iter().filter(|s| !s.contains("gradcam")) {
                let teacher = "teacher = \"t.safetensors\"\n";
                let at = |v: i64| make(source, &format!("{teacher}{key} = {v}"));
                let e = at(r.end() + 1).err().map(|e| e.to_string());
                let want = format!(
                    "[{source}] {key} = {} is outside [{}, {}]",
                    r.end() + 1,
                    r.start(),
                    r.end()
                );
                assert!(
                    e.as_ref().is_some_and(|e| e.contains(&want)),
                    "{e:?}\n  want {want}"
                );
                assert!(at(*r.end()).is_ok(), "[{source}] {key} = {}", r.end());
                assert!(
                    at(r.start() - 1).is_err(),
                    "[{source}] {key} = {}",
                    r.start() - 1
                );
            }
        }
        let e = make(
            "gradient",
            "teacher = \"t.safetensors\"\narch = \"wrn-28-100000\"",
        );
        let e = e.err().unwrap().to_string();
        assert!(e.contains("[gradient] arch: model arch `wrn-28-100000`: the widening factor 100000 is outside [1, 64]"), "{e}");
        // The host's model as teacher: the checkpoint keys are not read.
        assert!(make("gradient", "arch = \"wrn-28-100000\"").is_ok());
    }
}
