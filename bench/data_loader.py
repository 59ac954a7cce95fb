"""The PyTorch reference for `sat-host data bench`: a torch DataLoader over an ImageFolder
of JPEGs, decoded with torchvision.io.decode_jpeg and augmented with transforms v2.

Usage: .venv/bin/python bench/data_loader.py ROOT [--split train] [--size 224]
           [--recipe imagenet|cifar] [--workers W] [--batch-size B] [--batches K]
           [--seed S] [--json OUT]

Recipes: imagenet = RandomResizedCrop(size) + RandomHorizontalFlip; cifar = resize to
size×size, RandomCrop(size, padding=size // 8) + RandomHorizontalFlip. Batches are uint8
(B, 3, size, size). W worker processes (0: in the main process), one torch thread each
and in the main process. Reports the time to the first batch (from the construction of
the dataset and loader), the steady rate over the K batches after it, and that rate per
core, cores = max(W, 1).
"""
import argparse
import json
import os
import time

import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2


class JpegFolder(Dataset):
    def __init__(self, root, split, transform):
        classes = sorted(e.name for e in os.scandir(os.path.join(root, "train")) if e.is_dir())
        self.items = [
            (os.path.join(root, split, c, f), label)
            for label, c in enumerate(classes)
            for f in sorted(os.listdir(os.path.join(root, split, c)))
            if f.lower().endswith((".jpg", ".jpeg"))
        ]
        if not self.items:
            raise SystemExit(f"data_loader.py: no JPEGs under {os.path.join(root, split)}")
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        image = decode_jpeg(read_file(path), mode=ImageReadMode.RGB)
        return self.transform(image), label


def recipe(name, size):
    if name == "imagenet":
        return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
    return v2.Compose([
        v2.Resize((size, size), antialias=True),
        v2.RandomCrop(size, padding=size // 8),
        v2.RandomHorizontalFlip(),
    ])


def one_thread(_worker_id):
    torch.set_num_threads(1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--split", default="train")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--recipe", choices=["imagenet", "cifar"], default="imagenet")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)

    start = time.perf_counter()
    dataset = JpegFolder(a.root, a.split, recipe(a.recipe, a.size))
    # One pass of exactly the batches measured (whole permutations, then part of one).
    sampler = RandomSampler(dataset, num_samples=(a.batches + 1) * a.batch_size)
    loader = DataLoader(dataset, a.batch_size, sampler=sampler, num_workers=a.workers,
                        worker_init_fn=one_thread if a.workers > 0 else None)
    batches = iter(loader)
    images, _ = next(batches)
    first = time.perf_counter()
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, a.size, a.size), images.shape
    count = sum(len(labels) for _, labels in batches)
    elapsed = time.perf_counter() - first

    rate = count / elapsed
    result = {
        "tool": "pytorch",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "size": a.size,
        "recipe": a.recipe,
        "workers": a.workers,
        "batch_size": a.batch_size,
        "batches": a.batches,
        "images_per_s": rate,
        "per_core": rate / max(a.workers, 1),
        "first_batch_s": first - start,
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    print(f"pytorch: {a.size} px {a.recipe}, {a.workers} workers: {rate:.0f} img/s "
          f"({result['per_core']:.0f} per core), first batch {result['first_batch_s']:.2f} s")


if __name__ == "__main__":
    main()
