//! `sat-plugin-build`: the build script every crate that links sat's libtorch shares —
//! the host, the standard plugins and plugin crates written outside the sat tree.
//!
//! It gives the produced binaries, test executables and plugin libraries an rpath to
//! the libtorch that tch was built against (`LIBTORCH`), so nothing needs
//! `LD_LIBRARY_PATH`; links libtorch's CUDA library where it has one (so CUDA works);
//! and records that libtorch's version as `SAT_LIBTORCH_VERSION` and whether it has
//! CUDA as `SAT_LIBTORCH_CUDA` (`1` or `0`).
//!
//! Use it as a build dependency with a one-line `build.rs`:
//! ```toml
//! [build-dependencies]
//! sat-plugin-build = { path = "<path to sat>/plugin-build" }
//! ```
//! ```ignore
//! fn main() { sat_plugin_build::link_libtorch() }
//! ```
use std::{env, fs, path::Path};

/// Gives the crate being built an rpath to the libtorch that tch links (`LIBTORCH`),
/// links libtorch's CUDA library where it has one, and sets `SAT_LIBTORCH_VERSION` and
/// `SAT_LIBTORCH_CUDA` for the crate's code. Call it from `build.rs`:
/// `fn main() { sat_plugin_build::link_libtorch() }`. Panics (failing the build with the
/// message) when `LIBTORCH` is unset or its version cannot be read.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = env::var("LIBTORCH") else {
        panic!(
            "LIBTORCH is not set: inside the sat checkout run scripts/setup-libtorch (it \
             installs torch==2.13.0 and .cargo/config.toml points tch at it); for a plugin \
             crate of your own, `sat-host env` prints the LIBTORCH to use and `sat-host new` \
             writes it into the crate's .cargo/config.toml"
        );
    };
    let root = Path::new(&libtorch);
    let lib = root.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // libtorch's CUDA backend registers itself when libtorch_cuda.so is loaded, but
    // nothing calls into it directly, so the linker's default `--as-needed` drops it and
    // libtorch then sees no CUDA device. Keep it as a dependency of every binary, test
    // and plugin (tch-rs issue #980).
    let cuda = lib.join("libtorch_cuda.so").exists();
    if cuda {
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-env=SAT_LIBTORCH_CUDA={}", u8::from(cuda));
    let version = libtorch_version(root).unwrap_or_else(|| {
        panic!(
            "cannot read the libtorch version under {} (expected version.py or build-version)",
            root.display()
        )
    });
    println!("cargo:rustc-env=SAT_LIBTORCH_VERSION={version}");
}

/// Reads `torch/version.py` (the PyPI wheel) or `build-version` (the libtorch zip),
/// dropping any local suffix such as `+cu130`.
pub fn libtorch_version(root: &Path) -> Option<String> {
    for file in ["version.py", "build-version"] {
        let path = root.join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let raw = if file == "version.py" {
            text.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_owned())?
        } else {
            text.trim().to_owned()
        };
        return Some(raw.split('+').next().unwrap_or(&raw).to_owned());
    }
    None
}
