"""Reads the TensorBoard event files under a runs directory with the `tensorboard` package
itself (as `tensorboard --logdir RUNS` would: one run per directory holding event files,
records checked against their CRCs, data superseded by a restart purged), so that a Rust
test can check what sat-host wrote.

Usage: .venv/bin/python tests/pytorch/read_tensorboard.py RUNS

Prints one JSON object:
{"runs": {RUN: {"files": N, "scalars": {TAG: [[step, value], ...]}}}},
RUN as TensorBoard names it (the directory's path relative to RUNS). Exits 1 with a
message on any error.
"""
import json
import os
import sys

try:
    from tensorboard.backend.event_processing import event_accumulator, event_multiplexer
except ImportError as e:
    print(
        f"read_tensorboard.py: cannot import tensorboard ({e}); run scripts/setup-libtorch",
        file=sys.stderr,
    )
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        print("usage: read_tensorboard.py RUNS", file=sys.stderr)
        sys.exit(1)
    root = sys.argv[1]
    # Keep every scalar (the default samples 10 000 per tag).
    mux = event_multiplexer.EventMultiplexer(
        size_guidance={event_accumulator.SCALARS: 0}, purge_orphaned_data=True
    )
    mux.AddRunsFromDirectory(root)
    mux.Reload()
    runs = {}
    for run, tags in mux.Runs().items():
        scalars = {
            tag: [[e.step, e.value] for e in mux.Scalars(run, tag)]
            for tag in tags["scalars"]
        }
        directory = os.path.join(root, run)
        files = sum("tfevents" in name for name in os.listdir(directory))
        runs[run] = {"files": files, "scalars": scalars}
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
