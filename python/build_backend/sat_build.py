"""The package's PEP 517 build backend: maturin's, after building sat's standard plugin
libraries with the same cargo profile and copying them into ``sat/plugins/``, and after
pointing the build at the libtorch of the ``torch`` it can import (unless ``LIBTORCH``
is set, or the sat checkout's ``.venv/libtorch`` provides it).

Cargo's target directory is ``CARGO_TARGET_DIR`` or the workspace's ``target/``; the
profile is maturin's (``--profile``/``--release`` in ``MATURIN_PEP517_ARGS``; release by
default).
"""
import glob
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import sys

# maturin's hooks run the `maturin` executable: the one installed beside this Python.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

import maturin  # noqa: E402
from maturin import *  # noqa: F401,F403  (the PEP 517 hooks this module passes on)

PACKAGE = Path(__file__).resolve().parent.parent
WORKSPACE = PACKAGE.parent
PLUGINS = ["sat-plugin-attacks", "sat-plugin-saliency", "sat-plugin-gradient", "sat-plugin-objectives"]


def _profile():
    args = shlex.split(os.environ.get("MATURIN_PEP517_ARGS", ""))
    for i, arg in enumerate(args):
        if arg.startswith("--profile="):
            return arg.split("=", 1)[1]
        if arg == "--profile" and i + 1 < len(args):
            return args[i + 1]
    return "release"


def _libtorch():
    if os.environ.get("LIBTORCH") or (WORKSPACE / ".venv" / "libtorch").exists():
        return
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(
            "building sat needs torch 2.13.0 importable by the build (pip install "
            "--no-build-isolation ./python in an environment that has it), or LIBTORCH set"
        ) from e
    os.environ["LIBTORCH"] = str(Path(torch.__file__).resolve().parent)
    os.environ["LIBTORCH_CXX11_ABI"] = "1" if torch._C._GLIBCXX_USE_CXX11_ABI else "0"


def _stage_plugins():
    _libtorch()
    profile = _profile()
    command = ["cargo", "build", "--locked", "--profile", profile]
    for plugin in PLUGINS:
        command += ["-p", plugin]
    subprocess.run(command, cwd=WORKSPACE, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", WORKSPACE / "target"))
    built = target / ("debug" if profile == "dev" else profile)
    staged = PACKAGE / "sat" / "plugins"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    libraries = sorted(glob.glob(str(built / "libsat_plugin_*.so")))
    if len(libraries) < len(PLUGINS):
        raise RuntimeError(f"expected the {len(PLUGINS)} standard plugin libraries in {built}, found {libraries}")
    for library in libraries:
        shutil.copy2(library, staged)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _stage_plugins()
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _stage_plugins()
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)
