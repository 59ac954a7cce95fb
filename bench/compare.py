"""The Markdown table of docs/PERFORMANCE.md from the JSON files of one benchmark run.

Usage: python bench/compare.py DIR

DIR holds `rs-*.json` (`sat-host bench --json`), `py-*.json` (`bench/pytorch_bench.py
--json`) and, for CUDA runs, `matmul.json` (`bench/matmul_rate.py --json`). Rows are
paired by (model, row, amp). Columns: images/s of each, the ratio Rust/PyTorch, the
Rust step's cost in standard steps of the same model and precision, peak memory, and,
where PyTorch counted the step's FLOPs and the card's matrix rate is known, the
fraction of that rate each side achieves (float32 rows against the TF32 rate, which
cuDNN's convolutions use by default; mixed-precision rows against the float16 rate).
"""
import glob
import json
import os
import sys


def load(pattern):
    rows = {}
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            for r in json.load(f):
                rows[(r["model"], r["row"], bool(r.get("amp", False)))] = r
    return rows


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    folder = sys.argv[1]
    rs = load(os.path.join(folder, "rs-*.json"))
    py = load(os.path.join(folder, "py-*.json"))
    matmul = None
    if os.path.exists(os.path.join(folder, "matmul.json")):
        with open(os.path.join(folder, "matmul.json")) as f:
            matmul = json.load(f)
    # FLOPs per image of a training step, from PyTorch's count of the same model.
    flops = {
        (m, row): r["flops_per_step"]
        for (m, row, _), r in py.items()
        if r.get("flops_per_step")
    }
    if rs:
        first = next(iter(rs.values()))
        print(f"Device {first.get('device', '?')}, batch {first.get('batch', '?')}, "
              f"cuDNN benchmark mode {'on' if first.get('cudnn_benchmark') else 'off'}.")
        print()
    head = ["model", "row", "amp", "sat-host images/s", "PyTorch images/s", "Rust / PyTorch",
            "step ÷ standard (Rust)", "peak memory MiB (Rust / PyTorch)"]
    if matmul:
        head.append("fraction of matrix rate (Rust / PyTorch)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key in sorted(rs, key=lambda k: (k[0], k[2], list(rs).index(k))):
        model, row, amp = key
        r, p = rs[key], py.get(key)
        std = rs.get((model, "standard", amp))
        cells = [model, row, "yes" if amp else "no", f"{r['images_per_sec']:.1f}"]
        cells.append(f"{p['images_per_sec']:.1f}" if p else "—")
        cells.append(f"{r['images_per_sec'] / p['images_per_sec']:.2f}" if p else "—")
        cells.append(f"{r['seconds_per_step'] / std['seconds_per_step']:.2f}" if std else "—")
        if p and "peak_cuda_mib" in p:
            memory = f"RSS {r['peak_rss_mib']:.0f} / CUDA {p['peak_cuda_mib']:.0f}"
        else:
            memory = f"{r['peak_rss_mib']:.0f} / {p['peak_rss_mib']:.0f}" if p else f"{r['peak_rss_mib']:.0f} / —"
        cells.append(memory)
        if matmul:
            f = flops.get((model, row))
            if f:
                peak = matmul["float16_tflops" if amp else "tf32_tflops"] * 1e12
                rust = f / r["seconds_per_step"] / peak
                torch = f / p["seconds_per_step"] / peak if p else None
                cells.append(f"{rust:.3f} / {torch:.3f}" if torch else f"{rust:.3f} / —")
            else:
                cells.append("—")
        print("| " + " | ".join(cells) + " |")
    if matmul:
        print()
        print(f"Matrix rate of {matmul['device']} (torch {matmul['torch']}, "
              f"{matmul['size']}³ products): float32 {matmul['float32_tflops']:.1f}, "
              f"TF32 {matmul['tf32_tflops']:.1f}, float16 {matmul['float16_tflops']:.1f}, "
              f"bfloat16 {matmul['bfloat16_tflops']:.1f} TFLOP/s.")
    for (model, row), f in sorted(flops.items()):
        print(f"\nFLOPs of one `{row}` step of {model} (whole batch, forward + backward, "
              f"torch.utils.flop_counter): {f / 1e9:.1f} GFLOP.")


if __name__ == "__main__":
    main()
