//! Build script of `sat-python`: compiles the tensor bridge (`src/bridge.cpp`: a
//! `torch.Tensor` to and from libtorch's `at::Tensor`, through libtorch_python's
//! `THPVariable_Unpack`/`THPVariable_Wrap`) against `$LIBTORCH`'s headers and Python's,
//! and links it to `libtorch_python`.
//!
//! The bridge is what `pyo3-tch` does with tch's `python-extension` feature; sat does it
//! here instead because that feature links `libtorch_python` into `torch-sys` itself,
//! and cargo unifies features across the workspace: every binary of sat (`sat-host`,
//! the test executables) would then link a library that needs the Python interpreter's
//! symbols, and could no longer be built.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const BRIDGE: &str = "src/bridge.cpp";

fn main() {
    sat_plugin_build::link_libtorch();
    println!("cargo:rerun-if-changed={BRIDGE}");
    for var in ["LIBTORCH", "LIBTORCH_CXX11_ABI", "PYO3_PYTHON", "VIRTUAL_ENV"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let libtorch = PathBuf::from(env::var_os("LIBTORCH").expect("LIBTORCH is set (sat_plugin_build checked it)"));
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    let python_include = python_include().unwrap_or_else(|e| {
        panic!(
            "sat-python: Python's C headers were not found ({e}); install them \
             (Debian: apt-get install python3-dev) or set PYO3_PYTHON to an interpreter that has them"
        )
    });
    cc::Build::new()
        .cpp(true)
        .file(BRIDGE)
        .std("c++17")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .include(&python_include)
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        // libtorch 2.13's headers use C++20 bit-field initialisers that GCC and Clang
        // accept in C++17 mode with this warning.
        .flag_if_supported("-Wno-c++20-extensions")
        .flag_if_supported("-Wno-unused-parameter")
        .cargo_warnings(false)
        .compile("sat_python_bridge");
    let lib_dir = libtorch.join("lib");
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    for lib in ["torch_python", "torch", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}

/// The directory of `Python.h` of the interpreter the module is built for: `PYO3_PYTHON`,
/// else the active virtual environment's, else `python3`.
fn python_include() -> Result<PathBuf, String> {
    let python = env::var_os("PYO3_PYTHON")
        .map(PathBuf::from)
        .or_else(|| env::var_os("VIRTUAL_ENV").map(|v| Path::new(&v).join("bin/python")))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys, sysconfig; print(sysconfig.get_path('include')); print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
        ])
        .output()
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    let found = String::from_utf8_lossy(&out.stdout);
    let mut lines = found.lines();
    let dir = PathBuf::from(lines.next().unwrap_or_default().trim());
    if dir.join("Python.h").is_file() {
        return Ok(dir);
    }
    // An interpreter built without its headers: the distribution's for the same version
    // (Debian's python3-dev), which `scripts/setup-libtorch` installs when missing.
    let system = PathBuf::from(format!("/usr/include/python{}", lines.next().unwrap_or_default().trim()));
    if system.join("Python.h").is_file() {
        return Ok(system);
    }
    Err(format!("neither {} nor {} has Python.h", dir.display(), system.display()))
}
