"""Reads one split of a sat shard directory (`sat-host data pack`) with the `webdataset`
package, so that a Rust test can check that another tool reads the shards as sat does.

Usage: .venv/bin/python tests/pytorch/read_shards.py DIR SPLIT

Lists the split's shards from DIR/manifest.json, reads them in order (no shuffling),
decodes with webdataset's own decoders (images as RGB uint8, masks as grey uint8,
`.cls` as int, `.boxes.json` as JSON) and prints one JSON object:
{"samples": [{"key", "cls", "shape": [h, w, 3], "sum", "boxes", "mask_sum"}, ...]},
where sum and mask_sum are the integer sums of the pixel values and boxes and mask_sum
are null for a sample without them. Exits 1 with a message on any error.
"""
import json
import os
import sys

import webdataset as wds


def fail(message):
    print(f"read_shards.py: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        fail("usage: read_shards.py DIR SPLIT")
    root, split = sys.argv[1:]
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    if manifest.get("format") != "sat-shards" or manifest.get("version") != 1:
        fail(f"{root}: not a sat-shards version 1 manifest")
    if split not in manifest["splits"]:
        fail(f"{root}: no split {split!r} (has {sorted(manifest['splits'])})")
    shards = manifest["splits"][split]["shards"]
    if not shards:
        fail(f"{root}: split {split!r} has no shards")
    urls = [os.path.abspath(os.path.join(root, s["tar"])) for s in shards]
    grey = wds.imagehandler("l8")
    dataset = wds.WebDataset(urls, shardshuffle=False).decode(
        wds.handle_extension("mask.png", lambda data: grey("png", data)), "rgb8"
    )
    classes = len(manifest["classes"])
    samples = []
    for sample in dataset:
        key = sample["__key__"]
        images = [sample[e] for e in ("jpg", "png") if e in sample]
        if len(images) != 1 or "cls" not in sample:
            fail(f"sample {key}: expected one .jpg or .png and a .cls, found {sorted(sample)}")
        img, cls = images[0], sample["cls"]
        if not 0 <= cls < classes:
            fail(f"sample {key}: class {cls} outside the manifest's {classes} classes")
        boxes = sample.get("boxes.json")
        mask = sample.get("mask.png")
        samples.append({
            "key": key,
            "cls": cls,
            "shape": list(img.shape),
            "sum": int(img.sum(dtype="int64")),
            "boxes": None if boxes is None else boxes["boxes"],
            "mask_sum": None if mask is None else int(mask.sum(dtype="int64")),
        })
    expected = sum(s["samples"] for s in shards)
    if len(samples) != expected:
        fail(f"{root}: read {len(samples)} samples from split {split!r}, the manifest says {expected}")
    json.dump({"samples": samples}, sys.stdout)
    print()


if __name__ == "__main__":
    try:
        main()
    except wds.DecodingError as e:  # carries no message: name the file and the cause
        fail(f"{e.url}: cannot decode {e.key}.{e.k}: {e.__cause__!r}")
    except Exception as e:  # any other failure of the reader: one clear line
        fail(f"{type(e).__name__}: {e}")
