"""libjpeg-turbo's JPEG decode rate on one thread, for the decoder comparison of
docs/PERFORMANCE.md (`sat-host data bench --stage decode` gives zune-jpeg's on the same
files, packed).

Usage: .venv/bin/python bench/jpeg_decode.py ROOT [--split train] [--limit N] [--json OUT]

Decodes every JPEG under ROOT/SPLIT/<class>/ from bytes already in memory, three ways:
torchvision.io.decode_jpeg (libjpeg-turbo, full size, RGB); Pillow (its bundled
libjpeg-turbo) at full size; and Pillow with `draft` at half scale (libjpeg-turbo's DCT
scaling, the "reduced-scale decode" a crop of at most half the image's side allows).
Prints and writes images/s of each.
"""
import argparse
import io
import json
import os
import time

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg


def files(root, split, limit):
    out = []
    for c in sorted(os.listdir(os.path.join(root, split))):
        d = os.path.join(root, split, c)
        out += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.lower().endswith((".jpg", ".jpeg"))]
    return out[:limit] if limit else out


def rate(blobs, decode):
    decode(blobs[0])
    start = time.perf_counter()
    for b in blobs:
        decode(b)
    return len(blobs) / (time.perf_counter() - start)


def pil(b, scale):
    image = Image.open(io.BytesIO(b))
    if scale != 1:
        image.draft("RGB", (image.width // scale, image.height // scale))
    return image.convert("RGB").load()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(1)
    paths = files(a.root, a.split, a.limit)
    blobs = [open(f, "rb").read() for f in paths]
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    figures = {
        "images": len(blobs),
        "torchvision_decode_jpeg": rate(tensors, lambda t: decode_jpeg(t, mode=ImageReadMode.RGB)),
        "pillow_full": rate(blobs, lambda b: pil(b, 1)),
        "pillow_half_scale": rate(blobs, lambda b: pil(b, 2)),
    }
    print(" ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
