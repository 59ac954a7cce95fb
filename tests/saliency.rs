//! Gradient saliency plugins end to end: a teacher checkpoint from one run feeds every
//! source in training and in the `sat-host saliency` gallery; teachers compose.
use sat_tests::{metrics, plugin_dir, sat, tiny_run};
use std::path::Path;

const SOURCES: [&str; 6] = [
    "gradient",
    "guided-backprop",
    "smoothgrad",
    "integrated-gradients",
    "gradcam++",
    "guided-gradcam++",
];

/// Trains a tiny teacher and returns `--set` overrides pointing every gradient source
/// at its checkpoint.
fn teacher(cwd: &Path) -> Vec<String> {
    tiny_run(cwd, &["--set", "name=teacher"], &[]).success();
    let checkpoint = cwd.join("runs/teacher/checkpoint.safetensors");
    assert!(checkpoint.is_file());
    let mut sets = Vec::new();
    for source in SOURCES {
        for (key, value) in [
            ("teacher", format!("\"{}\"", checkpoint.display())),
            ("width", "4".into()),
        ] {
            sets.push("--set".into());
            sets.push(format!("components.\"{source}\".{key}={value}"));
        }
    }
    sets.extend(
        [
            "--set",
            "components.smoothgrad.samples=2",
            "--set",
            "components.\"integrated-gradients\".steps=4",
        ]
        .map(String::from),
    );
    sets
}

#[test]
fn every_gradient_source_trains_with_sat_and_draws_its_gallery() {
    let cwd = tempfile::tempdir().unwrap();
    let sets = teacher(cwd.path());
    let m = metrics(&cwd.path().join("runs/teacher"));
    assert!(m["alignment"].as_f64().unwrap() >= 0.0, "{m}");
    for source in SOURCES {
        let mut args: Vec<&str> = sets.iter().map(String::as_str).collect();
        let name = format!("name=sat-{}", source.replace('+', "p"));
        args.extend(["--plugin", source, "--attack", "sat", "--set", &name]);
        tiny_run(cwd.path(), &args, &[]).success();
    }
    let mut args = vec!["saliency", "--out", "gallery", "--samples", "3"];
    for source in SOURCES {
        args.extend(["--plugin", source]);
    }
    args.extend(["--plugin", "masks"]);
    args.extend(sets.iter().map(String::as_str));
    args.extend(["--set", "model.width=4"]);
    sat(cwd.path(), &args, &[]).success();
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cwd.path().join("gallery/gallery.json")).unwrap(),
    )
    .unwrap();
    let listed = index["sources"].as_array().unwrap();
    assert_eq!(listed.len(), 7);
    for entry in listed {
        let file = cwd
            .path()
            .join("gallery")
            .join(entry["file"].as_str().unwrap());
        let png = image::open(&file).unwrap();
        // 3 rows and 4 columns of 32 × 32 cells, magnified 4 times, with 2-pixel gaps.
        assert_eq!(
            (png.width(), png.height()),
            (4 * 128 + 10, 3 * 128 + 8),
            "{entry}"
        );
        assert!(entry["map_min"].as_f64().unwrap() >= -1.0);
        assert!(entry["map_max"].as_f64().unwrap() <= 1.0);
    }
}

#[test]
fn an_ensemble_of_teachers_is_drawn_per_epoch_and_composes_with_a_third_party_source() {
    let cwd = tempfile::tempdir().unwrap();
    let sets = teacher(cwd.path());
    let dir = plugin_dir(&["centre_prior"]);
    let mut args: Vec<&str> = sets.iter().map(String::as_str).collect();
    args.extend([
        "--plugin-dir",
        dir.path().to_str().unwrap(),
        "--plugin",
        "guided-backprop",
        "--plugin",
        "centre-prior",
        "--attack",
        "sat",
        "--set",
        "train.saliency_draw=\"epoch\"",
        "--set",
        "train.epochs=6",
        "--set",
        "name=ensemble",
    ]);
    tiny_run(cwd.path(), &args, &[]).success();
    let log = std::fs::read_to_string(cwd.path().join("runs/ensemble/log.txt")).unwrap();
    let drawn: Vec<&str> = (1..=6)
        .map(|e| {
            let prefix = format!("epoch {e}: saliency source `");
            let at = log
                .find(&prefix)
                .unwrap_or_else(|| panic!("no draw for epoch {e}:\n{log}"));
            let rest = &log[at + prefix.len()..];
            &rest[..rest.find('`').unwrap()]
        })
        .collect();
    // One source per epoch, from the seed: with seed 0 both teachers take turns.
    assert!(
        drawn.contains(&"guided-backprop") && drawn.contains(&"centre-prior"),
        "{drawn:?}"
    );
}

#[test]
fn guided_backprop_needs_a_teacher_it_can_see_into() {
    let cwd = tempfile::tempdir().unwrap();
    tiny_run(
        cwd.path(),
        &["--plugin", "guided-backprop", "--attack", "sat"],
        &[],
    )
    .fails_with(&[
        "guided-backprop",
        "needs to see the teacher's ReLUs",
        "libsat_plugin_gradient",
    ]);
    // The vanilla gradient works on the model being trained (self-saliency).
    tiny_run(
        cwd.path(),
        &[
            "--plugin",
            "gradient",
            "--attack",
            "sat",
            "--set",
            "name=self",
        ],
        &[],
    )
    .success();
}
