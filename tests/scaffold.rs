//! Plugin crates of their own, outside the sat tree: `sat-host new` writes one into a
//! temporary directory, a plain `cargo build` (and `cargo test`) run in that directory
//! builds it, and `sat-host` lists it and trains with it — for a saliency source, an
//! attack and an objective. Also `new`'s refusals and `sat-host env`.
//!
//! The builds share this workspace's target directory (`CARGO_TARGET_DIR`, as the
//! generated README suggests), so they reuse the compiled tch and torch-sys; the test
//! checks that torch-sys is not compiled again. Cargo's lock on the target directory
//! serialises the builds of tests running in parallel; each test has its own
//! directories and crate names.
use sat_tests::{metrics, sat, target_dir, tiny_run, Run};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The sat checkout these tests belong to.
fn sat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies inside the sat checkout")
        .to_path_buf()
}

/// A temporary directory outside the sat checkout.
fn outside_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let sat = sat_dir().canonicalize().expect("sat checkout");
    let inside = dir
        .path()
        .canonicalize()
        .expect("temp dir")
        .starts_with(&sat);
    assert!(
        !inside,
        "{} lies inside the sat checkout: point TMPDIR elsewhere",
        dir.path().display()
    );
    dir
}

/// Runs `cargo args…` in `crate_dir` as a plugin author would: the environment of this
/// test without tch's variables (the crate's `.cargo/config.toml` must provide them), and
/// the workspace's target directory shared. Returns stderr.
fn cargo(crate_dir: &Path, args: &[&str]) -> String {
    let shared_target = target_dir()
        .parent()
        .expect("target/<profile>")
        .to_path_buf();
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(args)
        .current_dir(crate_dir)
        .env_remove("LIBTORCH")
        .env_remove("LIBTORCH_CXX11_ABI")
        .env("CARGO_TARGET_DIR", &shared_target)
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .expect("run cargo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed\nstdout:\n{stdout}\nstderr:\n{stderr}",
        crate_dir.display()
    );
    stderr
}

/// A plugin crate written by `sat-host new KIND NAME` into a directory outside sat,
/// built and tested there, and a fresh plugin directory holding only its library.
struct Scaffolded {
    /// Holds the crate (`<tmp>/NAME`) and runs' working directory; removed on drop.
    tmp: tempfile::TempDir,
    /// A directory with only the crate's library in it, for `--plugin-dir`.
    plugins: tempfile::TempDir,
}

impl Scaffolded {
    fn new(kind: &str, name: &str) -> Self {
        let tmp = outside_dir();
        let crate_dir = tmp.path().join(name);
        let out = crate_dir.to_str().unwrap();
        let made = sat(tmp.path(), &["new", kind, name, "--out", out], &[]).success();
        assert!(
            made.stdout.contains(&format!("`{name}`")),
            "{}",
            made.stdout
        );
        for file in [
            "Cargo.toml",
            "Cargo.lock",
            "build.rs",
            "src/lib.rs",
            "README.md",
            ".cargo/config.toml",
        ] {
            assert!(crate_dir.join(file).is_file(), "{file} is missing");
        }
        // The documented steps: `cargo build` and `cargo test` in the crate's directory.
        let build = cargo(&crate_dir, &["build"]);
        for rebuilt in ["Compiling torch-sys", "Compiling tch "] {
            assert!(
                !build.contains(rebuilt),
                "building the crate compiled libtorch's bindings again (`{rebuilt}`): its \
                 Cargo.lock, profiles or LIBTORCH no longer match the sat workspace's build\n{build}"
            );
        }
        cargo(&crate_dir, &["test", "--quiet"]);
        let lib = format!(
            "{}{}{}",
            std::env::consts::DLL_PREFIX,
            name.replace('-', "_"),
            std::env::consts::DLL_SUFFIX
        );
        let plugins = tempfile::tempdir().expect("temp dir");
        std::fs::copy(target_dir().join(&lib), plugins.path().join(&lib))
            .expect("copy the library");
        Self { tmp, plugins }
    }

    fn plugin_dir(&self) -> &str {
        self.plugins.path().to_str().unwrap()
    }

    /// `sat-host --plugin-dir <plugins> plugins --json` has `name` of `kind`, from there.
    fn assert_listed(&self, name: &str, kind: &str) {
        let out = sat(
            self.tmp.path(),
            &["--plugin-dir", self.plugin_dir(), "plugins", "--json"],
            &[],
        )
        .success();
        let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("`{name}` is not listed:\n{}", out.stdout));
        assert_eq!(entry["kind"], kind);
        let path = entry["path"].as_str().unwrap();
        assert!(path.starts_with(self.plugin_dir()), "{path}");
    }

    /// A one-epoch tiny run named `run` with the plugin directory and `args`.
    fn train(&self, args: &[&str]) -> Run {
        let mut all = vec!["--plugin-dir", self.plugin_dir(), "--set", "name=run"];
        all.extend_from_slice(args);
        let out = tiny_run(self.tmp.path(), &all, &[]).success();
        let m = metrics(&self.tmp.path().join("runs/run"));
        assert_eq!(m["status"], "completed", "{m}");
        let loss = m["epochs"][0]["train_loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
        out
    }
}

#[test]
fn a_new_saliency_source_builds_outside_sat_and_trains_with_sat() {
    let s = Scaffolded::new("saliency", "my-source");
    s.assert_listed("my-source", "saliency");
    let out = s.train(&["--plugin", "my-source", "--attack", "sat"]);
    assert!(
        out.stderr.contains("saliency from my-source"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_new_attack_builds_outside_sat_trains_and_evaluates() {
    let s = Scaffolded::new("attack", "my-attack");
    s.assert_listed("my-attack", "attack");
    s.train(&[
        "--attack",
        "my-attack",
        "--set",
        "eval.attacks=[\"my-attack\"]",
    ]);
    let m = metrics(&s.tmp.path().join("runs/run"));
    let rows = m["robust_accuracy"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["attack"] == "my-attack"), "{m}");
}

#[test]
fn a_new_objective_builds_outside_sat_and_trains() {
    let s = Scaffolded::new("objective", "my-objective");
    s.assert_listed("my-objective", "objective");
    let out = s.train(&["--objective", "my-objective"]);
    assert!(
        out.stderr.contains("objective `my-objective`"),
        "{}",
        out.stderr
    );
}

#[test]
fn new_refuses_a_non_empty_directory_and_bad_names() {
    let tmp = outside_dir();
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("notes.txt"), "mine").unwrap();
    let full = full.to_str().unwrap();
    sat(
        tmp.path(),
        &["new", "saliency", "my-source", "--out", full],
        &[],
    )
    .fails_with(&[full, "not empty"]);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("full/notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path().join("full")).unwrap().count(),
        1
    );

    let out = tmp.path().join("new");
    let out = out.to_str().unwrap();
    for (kind, name, needles) in [
        (
            "saliency",
            "My_Source",
            &["`My_Source` is not a valid component name", "[a-z0-9+-]+"][..],
        ),
        (
            "attack",
            "3d",
            &["crate name `3d`", "starts with a letter", "--crate-name"][..],
        ),
        (
            "objective",
            "serde",
            &["crate name `serde`", "Cargo.lock"][..],
        ),
    ] {
        sat(tmp.path(), &["new", kind, name, "--out", out], &[]).fails_with(needles);
        assert!(
            !tmp.path().join("new").exists(),
            "{name}: nothing is written"
        );
    }
    let kind = sat(tmp.path(), &["new", "teacher", "x", "--out", out], &[]);
    assert_eq!(kind.code, Some(2), "{}", kind.stderr);
    assert!(
        kind.stderr.contains("saliency, attack, objective"),
        "{}",
        kind.stderr
    );
}

#[test]
fn env_names_the_libtorch_versions_source_and_plugin_dirs() {
    let tmp = outside_dir();
    let odd = tmp.path().join("it's a dir");
    let odd = odd.to_str().unwrap();
    let env = [("SAT_PLUGIN_PATH", "/from/env")];
    let args = ["--plugin-dir", odd, "--plugin-dir", "rel", "env", "--json"];
    let out = sat(tmp.path(), &args, &env).success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let libtorch = Path::new(v["libtorch"].as_str().unwrap());
    assert!(libtorch.join("lib").is_dir(), "{}", libtorch.display());
    for key in ["libtorch_version", "tch_version", "sat_core_version"] {
        assert!(!v[key].as_str().unwrap().is_empty(), "{key}");
    }
    let source = Path::new(v["source_dir"].as_str().unwrap());
    assert_eq!(
        source.canonicalize().unwrap(),
        sat_dir().canonicalize().unwrap()
    );
    let dirs: Vec<&str> = v["plugin_dirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(Path::new(dirs[0]), target_dir(), "next to the binary first");
    assert_eq!(dirs[1], odd);
    let rel = Path::new(dirs[2]);
    assert!(rel.is_absolute() && rel.ends_with("rel"), "{dirs:?}");
    assert_eq!(
        rel.parent().unwrap().canonicalize().unwrap(),
        tmp.path().canonicalize().unwrap()
    );
    assert_eq!(dirs[3..], ["/from/env"], "{dirs:?}");

    // The assignments are valid shell: evaluating them gives the values back.
    let shell = sat(tmp.path(), &args[..args.len() - 1], &env)
        .success()
        .stdout;
    for key in [
        "LIBTORCH=",
        "SAT_LIBTORCH_VERSION=",
        "SAT_TCH_VERSION=",
        "SAT_CORE_VERSION=",
        "SAT_SOURCE_DIR=",
    ] {
        assert!(shell.lines().any(|l| l.starts_with(key)), "{key}\n{shell}");
    }
    let eval = Command::new("sh")
        .args([
            "-c",
            "eval \"$1\" && printf '%s\\n%s' \"$LIBTORCH\" \"$SAT_PLUGIN_DIRS\"",
            "sh",
            &shell,
        ])
        .output()
        .expect("run sh");
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let expected = format!("{}\n{}", libtorch.display(), dirs.join(":"));
    assert_eq!(String::from_utf8_lossy(&eval.stdout), expected);
}
