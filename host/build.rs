//! The host's build script: the shared libtorch set-up (rpath, CUDA library,
//! `SAT_LIBTORCH_VERSION`), and the facts `sat-host new` and `sat-host env` hand to plugin
//! crates built elsewhere: the sat checkout this binary is built from
//! (`SAT_SOURCE_DIR`) and the libtorch it links (`SAT_LIBTORCH`,
//! `SAT_LIBTORCH_CXX11_ABI`), exactly as tch's build saw them.
use std::{env, path::Path};

fn main() {
    sat_plugin_build::link_libtorch();
    let manifest = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let source = Path::new(&manifest)
        .parent()
        .expect("host/ lies inside the sat checkout");
    println!("cargo:rustc-env=SAT_SOURCE_DIR={}", source.display());
    // Recorded verbatim: a plugin built with the same string reuses the compiled
    // torch-sys of a shared target directory (its build script reruns when it changes).
    let libtorch = env::var("LIBTORCH").expect("checked by link_libtorch");
    println!("cargo:rustc-env=SAT_LIBTORCH={libtorch}");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_default();
    println!("cargo:rustc-env=SAT_LIBTORCH_CXX11_ABI={abi}");
}
