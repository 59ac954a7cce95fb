//! Shared build script for every crate that links libtorch (the host, the plugins,
//! third-party plugins). It gives the produced binaries, test executables and plugin
//! libraries an rpath to the libtorch that tch was built against, so nothing needs
//! `LD_LIBRARY_PATH`, links libtorch's CUDA library where it has one (so CUDA works),
//! and records that libtorch's version as `SAT_LIBTORCH_VERSION` and whether it has
//! CUDA as `SAT_LIBTORCH_CUDA` (`1` or `0`).
//!
//! Use it with `build = "<path to sat>/core/libtorch_build.rs"` in `Cargo.toml`.
use std::{env, fs, path::Path};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = env::var("LIBTORCH") else {
        panic!(
            "LIBTORCH is not set: run scripts/setup-libtorch from the sat checkout, \
             which installs torch==2.13.0 and points .cargo/config.toml at it"
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
fn libtorch_version(root: &Path) -> Option<String> {
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
