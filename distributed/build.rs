//! Build script of `sat-distributed`: compiles the C++ shim (`shim/c10d_shim.cpp`, the
//! gradient reducer `shim/reducer.cpp`, the differentiable all-reduce
//! `shim/autograd_sum.cpp`, their header `shim/shim.hpp`) against
//! the headers of the libtorch in `$LIBTORCH` and links it to that libtorch.
//!
//! # Backends
//!
//! Each backend is compiled in only when what it needs is found; otherwise it is compiled
//! out with a `cargo:warning` saying why, and the crate still builds (its constructors
//! then return an error naming the missing piece).
//!
//! - **Gloo** (`cfg(sat_gloo)`, `-DSAT_WITH_GLOO -DUSE_C10D_GLOO`). The torch wheel links
//!   gloo statically into `libtorch_cpu.so` but ships none of gloo's headers, which
//!   `c10d/ProcessGroupGloo.hpp` includes: `gloo/algorithm.h`, `gloo/common/error.h`,
//!   `gloo/context.h`, `gloo/rendezvous/store.h`, `gloo/transport/device.h` (and what they
//!   include, e.g. `gloo/config.h`). They are taken from `$GLOO_INCLUDE_DIR` or
//!   `/usr/include` (Debian: `apt-get install libgloo-dev`, a 2022 snapshot). The build
//!   never links Debian's `libgloo.so`: the headers only *declare* what c10d's header
//!   needs. That is sound because the shim compiles no inline gloo code that depends on
//!   gloo's layout: it handles gloo objects only as
//!   `std::shared_ptr<gloo::transport::Device>` (made by c10d's out-of-line
//!   `createDevice*` and stored in c10d's own `Options::devices`), and `ProcessGroupGloo`
//!   holds gloo objects only through smart pointers, so the `sizeof`/offsets the shim
//!   computes come from c10d's headers alone. (Checked with `nm -C` on the object: it
//!   references no `gloo::` function; the only gloo-typed code instantiated is
//!   `std::vector<std::shared_ptr<gloo::transport::Device>>`'s.)
//! - **NCCL** (`cfg(sat_nccl)`, `-DSAT_WITH_NCCL -DUSE_C10D_NCCL`): needs
//!   `$LIBTORCH/lib/libtorch_cuda.so`, `nccl.h` (`$NCCL_INCLUDE_DIR` or the NCCL wheel's
//!   `$LIBTORCH/../nvidia/nccl/include`) and the CUDA headers that c10d's
//!   `ProcessGroupNCCL.hpp` pulls in through `ATen/cuda`: `cuda_runtime_api.h`,
//!   `crt/host_config.h` (wheel `nvidia-cuda-crt`) and `nv/target` (wheel
//!   `nvidia-cuda-cccl`), searched in every `$LIBTORCH/../nvidia/*/include` (and its
//!   `cccl/`), `$CUDA_HOME/include`, `/usr/local/cuda/include` and the `:`-separated
//!   `$SAT_CUDA_INCLUDE`.
//!
//! `SAT_DISTRIBUTED_GLOO=0` / `SAT_DISTRIBUTED_NCCL=0` force a backend out. Should the
//! shim still fail to compile with a backend that looked available, the script warns and
//! compiles it again without that backend (NCCL first, then Gloo).
//!
//! After installing gloo's or CUDA's headers, rebuild with
//! `cargo clean -p sat-distributed` (header directories are not watched).

use std::env;
use std::path::{Path, PathBuf};

const SHIM: &str = "shim/c10d_shim.cpp";
/// The gradient reducer (bucketed all-reduces launched from autograd hooks).
const REDUCER: &str = "shim/reducer.cpp";
/// What the shim's files share.
const SHIM_HEADER: &str = "shim/shim.hpp";
/// The differentiable all-reduce (synchronised BatchNorm).
const AUTOGRAD_SUM: &str = "shim/autograd_sum.cpp";
const GLOO_HEADERS: &[&str] = &[
    "gloo/algorithm.h",
    "gloo/common/error.h",
    "gloo/context.h",
    "gloo/rendezvous/store.h",
    "gloo/transport/device.h",
];
/// CUDA headers `ProcessGroupNCCL.hpp` needs (through `ATen/cuda/CUDAContext.h`), with the
/// wheel that ships each one.
const CUDA_HEADERS: &[(&str, &str)] = &[
    ("cuda_runtime_api.h", "nvidia-cuda-runtime"),
    ("crt/host_config.h", "nvidia-cuda-crt"),
    ("nv/target", "nvidia-cuda-cccl"),
];

struct Backends {
    gloo: Result<PathBuf, String>,
    nccl: Result<Vec<PathBuf>, String>,
}

fn main() {
    for var in [
        "LIBTORCH",
        "LIBTORCH_CXX11_ABI",
        "GLOO_INCLUDE_DIR",
        "NCCL_INCLUDE_DIR",
        "CUDA_HOME",
        "SAT_CUDA_INCLUDE",
        "SAT_DISTRIBUTED_GLOO",
        "SAT_DISTRIBUTED_NCCL",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed={SHIM}");
    println!("cargo:rerun-if-changed={REDUCER}");
    println!("cargo:rerun-if-changed={SHIM_HEADER}");
    println!("cargo:rerun-if-changed={AUTOGRAD_SUM}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(sat_gloo)");
    println!("cargo:rustc-check-cfg=cfg(sat_nccl)");

    let libtorch = match env::var_os("LIBTORCH") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "sat-distributed: LIBTORCH is not set; point it at the libtorch tch uses \
             (the project's .cargo/config.toml sets it to .venv/libtorch)"
        ),
    };
    let lib_dir = libtorch.join("lib");
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());

    let mut backends = Backends {
        gloo: find_gloo(),
        nccl: find_nccl(&libtorch),
    };
    loop {
        match compile(&libtorch, &abi, &backends) {
            Ok(()) => break,
            Err(e) if backends.nccl.is_ok() => {
                warn(&format!(
                    "NCCL backend compiled out: the shim failed to compile with it: {e}"
                ));
                backends.nccl = Err(format!("the shim failed to compile with NCCL: {e}"));
            }
            Err(e) if backends.gloo.is_ok() => {
                warn(&format!(
                    "Gloo backend compiled out: the shim failed to compile with it: {e}"
                ));
                backends.gloo = Err(format!("the shim failed to compile with Gloo: {e}"));
            }
            Err(e) => panic!("sat-distributed: the c10d shim failed to compile: {e}"),
        }
    }

    match &backends.gloo {
        Ok(_) => {
            println!("cargo:rustc-cfg=sat_gloo");
            println!("cargo:rustc-env=SAT_C10D_GLOO_STATUS=compiled in");
        }
        Err(why) => {
            warn(&format!("Gloo backend compiled out: {why}"));
            println!("cargo:rustc-env=SAT_C10D_GLOO_STATUS={}", one_line(why));
        }
    }
    match &backends.nccl {
        Ok(_) => {
            println!("cargo:rustc-cfg=sat_nccl");
            println!("cargo:rustc-env=SAT_C10D_NCCL_STATUS=compiled in");
        }
        Err(why) => {
            warn(&format!("NCCL backend compiled out: {why}"));
            println!("cargo:rustc-env=SAT_C10D_NCCL_STATUS={}", one_line(why));
        }
    }

    // cc already emitted `static=c10d_shim` (and libstdc++); the libraries it calls into
    // must follow it on the link line. Every one is referenced by a symbol of the shim,
    // so `--as-needed` linkers keep them.
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    if backends.nccl.is_ok() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    for lib in ["torch", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    // This package's own tests and examples find libtorch without LD_LIBRARY_PATH, and
    // keep libtorch.so even though only libtorch_cpu.so is referenced directly.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
}

fn compile(libtorch: &Path, abi: &str, backends: &Backends) -> Result<(), String> {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file(SHIM)
        .file(REDUCER)
        .file(AUTOGRAD_SUM)
        .std("c++17")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", abi)
        // libtorch 2.13's headers use C++20 bit-field initialisers that GCC and Clang
        // accept in C++17 mode with this warning.
        .flag_if_supported("-Wno-c++20-extensions")
        .flag_if_supported("-Wno-unused-parameter")
        .cargo_warnings(false);
    if let Ok(dir) = &backends.gloo {
        build
            .define("SAT_WITH_GLOO", None)
            .define("USE_C10D_GLOO", None)
            .include(dir);
    }
    if let Ok(dirs) = &backends.nccl {
        build
            .define("SAT_WITH_NCCL", None)
            .define("USE_C10D_NCCL", None);
        for dir in dirs {
            build.include(dir);
        }
    }
    build
        .try_compile("c10d_shim")
        .map_err(|e| one_line(&e.to_string()))
}

fn disabled(var: &str) -> bool {
    matches!(
        env::var(var).as_deref(),
        Ok("0") | Ok("false") | Ok("off") | Ok("no")
    )
}

fn find_gloo() -> Result<PathBuf, String> {
    if disabled("SAT_DISTRIBUTED_GLOO") {
        return Err("disabled by SAT_DISTRIBUTED_GLOO".to_owned());
    }
    let dir = env::var_os("GLOO_INCLUDE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/include".into());
    let missing: Vec<&str> = GLOO_HEADERS
        .iter()
        .copied()
        .filter(|h| !dir.join(h).is_file())
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(format!(
            "gloo headers {} not found in {} (install libgloo-dev or set GLOO_INCLUDE_DIR)",
            missing.join(", "),
            dir.display()
        ))
    }
}

fn find_nccl(libtorch: &Path) -> Result<Vec<PathBuf>, String> {
    if disabled("SAT_DISTRIBUTED_NCCL") {
        return Err("disabled by SAT_DISTRIBUTED_NCCL".to_owned());
    }
    let lib_dir = libtorch.join("lib");
    for lib in ["libtorch_cuda.so", "libc10_cuda.so"] {
        if !lib_dir.join(lib).is_file() {
            return Err(format!(
                "{} not found (a CPU-only libtorch)",
                lib_dir.join(lib).display()
            ));
        }
    }
    // The wheels' `nvidia/` directory beside `torch/` (LIBTORCH may be a symlink to it).
    let root = libtorch
        .canonicalize()
        .unwrap_or_else(|_| libtorch.to_owned());
    let nvidia = root.parent().map(|p| p.join("nvidia")).unwrap_or_default();

    let nccl_dir = env::var_os("NCCL_INCLUDE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| nvidia.join("nccl/include"));
    if !nccl_dir.join("nccl.h").is_file() {
        return Err(format!(
            "nccl.h not found in {} (set NCCL_INCLUDE_DIR)",
            nccl_dir.display()
        ));
    }

    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(extra) = env::var_os("SAT_CUDA_INCLUDE") {
        candidates.extend(env::split_paths(&extra));
    }
    if let Ok(entries) = std::fs::read_dir(&nvidia) {
        let mut wheel_dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("include"))
            .collect();
        wheel_dirs.sort();
        for dir in wheel_dirs {
            candidates.push(dir.join("cccl"));
            candidates.push(dir);
        }
    }
    if let Some(home) = env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("include"));
    }
    candidates.push("/usr/local/cuda/include".into());

    let mut dirs = vec![nccl_dir];
    let mut missing = Vec::new();
    for (header, wheel) in CUDA_HEADERS {
        match candidates.iter().find(|d| d.join(header).is_file()) {
            Some(d) => {
                if !dirs.contains(d) {
                    dirs.push(d.clone());
                }
            }
            None => missing.push(format!("`{header}` (wheel {wheel})")),
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "CUDA header(s) {} needed by c10d/ProcessGroupNCCL.hpp (via ATen/cuda and \
             cuda_runtime.h) not found in {}/*/include, $CUDA_HOME/include, \
             /usr/local/cuda/include or $SAT_CUDA_INCLUDE",
            missing.join(", "),
            nvidia.display()
        ));
    }
    Ok(dirs)
}

fn one_line(s: &str) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 600 {
        let mut end = 600;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    } else {
        line
    }
}

fn warn(msg: &str) {
    println!("cargo:warning=sat-distributed: {}", one_line(msg));
}
