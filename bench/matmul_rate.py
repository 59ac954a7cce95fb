"""The card's measured matrix-product rate, the ceiling for the `sat-host bench` CUDA rows.

Usage: python bench/matmul_rate.py [--size 8192] [--repeats 10] [--json FILE]

An n×n×n product on random data (never zeros) in float32 (TF32 off), TF32, float16
and bfloat16; three warm-up products, then the median of `--repeats` products timed
with CUDA events. TFLOP/s = 2·n³ / time. Needs a CUDA device.
"""
import argparse
import json
import statistics

import torch


def rate(n, dtype, tf32, repeats):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("matmul_rate.py: no CUDA device")
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "size": args.size}
    for name, dtype, tf32 in [
        ("float32", torch.float32, False),
        ("tf32", torch.float32, True),
        ("float16", torch.float16, False),
        ("bfloat16", torch.bfloat16, False),
    ]:
        out[f"{name}_tflops"] = rate(args.size, dtype, tf32, args.repeats)
        print(f"{name}: {out[f'{name}_tflops']:.1f} TFLOP/s", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
