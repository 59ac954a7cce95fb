"""Writes a synthetic ImageFolder of JPEGs (quality 90) for the data-loader benchmarks.

Usage: .venv/bin/python bench/make_jpegs.py OUT [--size S | --min-size A --max-size B]
           [--train N] [--test M] [--classes C] [--seed K]

OUT/train/<class>/<i>.jpg and OUT/test/<class>/<i>.jpg, images spread evenly over the
classes. Each image is a smooth two-colour gradient with a few coloured shapes (the
class picks the first shape's kind) under some pixel noise, so it compresses like a
photograph rather than a flat fill. Fixed S×S px, or each side drawn in [A, B]
(--min-size/--max-size override S; e.g. 300 to 500 for ImageNet-like sizes). The same
arguments give the same files: each image has its own random stream, seeded by
(seed, split, index).
"""
import argparse
import os

import numpy as np
from PIL import Image, ImageDraw


def image(rng, label, w, h):
    c0, c1 = rng.integers(0, 256, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    xs = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    ys = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    t = np.cos(angle) * xs + np.sin(angle) * ys
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = Image.fromarray((c0 + t[:, :, None] * (c1 - c0)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for k in range(int(rng.integers(1, 4))):
        kind = label % 3 if k == 0 else int(rng.integers(0, 3))
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        rx, ry = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.3) * h
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        if kind == 0:
            draw.ellipse(box, fill=fill)
        elif kind == 1:
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - ry), (cx + rx, cy + ry), (cx - rx, cy + ry)], fill=fill)
    noise = rng.integers(-16, 17, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--min-size", type=int)
    p.add_argument("--max-size", type=int)
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    lo, hi = a.min_size or a.size, a.max_size or a.size
    if not 0 < lo <= hi or a.classes < 1:
        p.error("need 0 < min-size <= max-size and at least one class")
    for split_id, (split, count) in enumerate((("train", a.train), ("test", a.test))):
        for c in range(a.classes):
            os.makedirs(os.path.join(a.out, split, f"c{c:03d}"), exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([a.seed, split_id, i])
            w, h = (int(v) for v in rng.integers(lo, hi + 1, 2))
            label = i % a.classes
            path = os.path.join(a.out, split, f"c{label:03d}", f"{i:06d}.jpg")
            image(rng, label, w, h).save(path, quality=90)
    print(f"make_jpegs: {a.train} train + {a.test} test JPEGs, {a.classes} classes, {lo}-{hi} px, in {a.out}")


if __name__ == "__main__":
    main()
