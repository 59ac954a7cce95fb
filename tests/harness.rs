//! Finds the built `sat-host` binary and plugin libraries and runs them.
//!
//! The test script (`scripts/test`) builds the workspace, the fixtures and the example
//! plugin before `cargo test`, so everything lives in the same target directory as
//! these test executables.
#[path = "ranks.rs"]
pub mod ranks;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The target profile directory (`target/debug`), from this test executable's path.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// A built artefact in the target directory, which must exist.
pub fn artefact(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test (it builds the binary, plugins and fixtures first)",
        path.display()
    );
    path
}

/// The `sat-host` binary.
pub fn sat_host() -> PathBuf {
    artefact("sat-host")
}

/// A plugin library file name in the target directory, e.g. `library("sat_fixture_faulty")`.
pub fn library(stem: &str) -> PathBuf {
    artefact(&format!("lib{stem}{}", std::env::consts::DLL_SUFFIX))
}

/// A fresh directory holding copies of the given libraries, for `--plugin-dir`.
pub fn plugin_dir(stems: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for stem in stems {
        let src = library(stem);
        std::fs::copy(&src, dir.path().join(src.file_name().expect("file name")))
            .expect("copy library");
    }
    dir
}

/// The result of one command.
pub struct Run {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns self.
    pub fn success(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
    /// Asserts a clean failure whose stderr contains every one of `needles`, and returns
    /// stderr. Exit code 1 is an error the host reported; a panic of the host exits with
    /// 70 during `run` (where it is caught and recorded) and with 101 elsewhere, and an
    /// abort (e.g. a panic unwinding across FFI) with 134.
    pub fn fails_with(self, needles: &[&str]) -> String {
        assert_eq!(
            self.code,
            Some(1),
            "expected exit code 1\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr lacks {n:?}:\n{}",
                self.stderr
            );
        }
        self.stderr
    }
}

/// Runs `sat-host args…` in `cwd` with `SAT_PLUGIN_PATH` cleared unless given in `env`.
pub fn sat(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(sat_host());
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("SAT_PLUGIN_PATH")
        .env_remove("SAT_LOG")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run sat-host");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Starts `sat-host args…` in `cwd` in the background (stdout discarded, stderr as
/// given), with `SAT_PLUGIN_PATH` cleared.
pub fn spawn_sat(cwd: &Path, args: &[&str], stderr: std::process::Stdio) -> std::process::Child {
    Command::new(sat_host())
        .args(args)
        .current_dir(cwd)
        .env_remove("SAT_PLUGIN_PATH")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start sat-host")
}

/// Waits until `path` exists, failing the test after `seconds`.
pub fn wait_for_file(path: &Path, seconds: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not appear within {seconds} s",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Sends Ctrl-C (SIGINT) to a running `sat-host` and waits for it; asserts that it
/// exits with 130, the code of a run stopped by Ctrl-C.
pub fn interrupt(child: std::process::Child) -> std::process::Output {
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let out = child.wait_with_output().expect("wait for sat-host");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `metrics.json` of the run directory `dir`, parsed.
pub fn metrics(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("metrics.json")).expect("metrics.json");
    serde_json::from_str(&text).expect("valid metrics.json")
}

/// Overrides that make a training run take a few seconds.
pub const TINY: &[&str] = &[
    "--set",
    "data.train_size=64",
    "--set",
    "data.test_size=32",
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=32",
    "--set",
    "model.width=4",
    "--set",
    "eval.epsilons=[\"4/255\"]",
    "--set",
    "components.pgd.steps=1",
];

/// `run` with [`TINY`] and `extra` arguments.
pub fn tiny_run(cwd: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let mut args = vec!["run"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    sat(cwd, &args, env)
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.to_string_lossy().into_owned()
}

/// An ImageFolder of `per_class` PNGs per class and split (3 classes, 20×16 to 30×22
/// px): a bright square whose corner depends on the class, its box as a sidecar, and
/// its mask.
pub fn image_folder(root: &Path, per_class: u32) {
    for split in ["train", "test"] {
        for class in 0..3u32 {
            let dir = root.join(split).join(format!("c{class}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                let (w, h) = (20 + (i % 11), 16 + (i % 7));
                let (x0, y0) = ((class * 5) % (w - 8), (class * 3 + i) % (h - 8));
                let inside =
                    |x: u32, y: u32| (x0..x0 + 8).contains(&x) && (y0..y0 + 8).contains(&y);
                image::RgbImage::from_fn(w, h, |x, y| {
                    if inside(x, y) {
                        image::Rgb([250, 240 - 60 * class as u8, 30])
                    } else {
                        image::Rgb([(x * 3) as u8, (y * 5) as u8, (i * 7 % 200) as u8])
                    }
                })
                .save(dir.join(format!("img{i}.png")))
                .unwrap();
                std::fs::write(
                    dir.join(format!("img{i}.boxes.csv")),
                    format!("{x0},{y0},{},{}\n", x0 + 8, y0 + 8),
                )
                .unwrap();
                image::GrayImage::from_fn(w, h, |x, y| {
                    image::Luma([if inside(x, y) { 255 } else { 0 }])
                })
                .save(dir.join(format!("img{i}.mask.png")))
                .unwrap();
            }
        }
    }
}

/// Packs `root` (format `from`) into `out` with `extra` arguments.
pub fn pack(cwd: &Path, root: &Path, from: &str, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "data",
        "pack",
        root.to_str().unwrap(),
        "--from",
        from,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    sat(cwd, &args, &[]).success();
}
