"""SAT in a plain PyTorch training loop: the quickstart experiment from Python.

Trains the same small CNN twice on sat's generated ``shapes`` data (or your own tensors:
replace ``load_data``) with the same seed — standard training, and SAT with mask
saliency — and evaluates both under PGD-10 at 2, 4 and 8/255 with ``sat.evaluate``.
Only torch and sat: no torchvision.

    .venv/bin/python examples/python/train_sat.py [--epochs 8] [--out runs/python-quickstart.json]

The model is sat's ``small-cnn`` written in PyTorch, trained as ``examples/quickstart.toml``
trains it (Adam 1e-3, batch 128, 8 epochs, crop and flip per sample). The three
building blocks, in ``train_epoch``:
- ``sat.Saliency("masks")`` turns the data set's masks into maps in [-1, 1];
- ``sat.perturb`` turns images and maps into the SAT input (no gradient steps), its
  curriculum coin drawn from a seeded ``torch.Generator``;
- ``sat.Objective("ce")`` is the loss on that input (``trades``, ``rrr``, … likewise).
"""
import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import sat


def conv_bn(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCnn(nn.Module):
    """sat's `small-cnn` (models/src/lib.rs) in PyTorch: five 3×3 convolutions with
    BatchNorm, two max-pools, global average pooling, a linear head."""

    def __init__(self, classes: int, width: int = 32):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.features = nn.Sequential(
            conv_bn(3, w1), conv_bn(w1, w1), nn.MaxPool2d(2),
            conv_bn(w1, w2), conv_bn(w2, w2), nn.MaxPool2d(2),
            conv_bn(w2, w3),
        )
        self.head = nn.Linear(w3, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def load_data(train_size: int, test_size: int, seed: int):
    """sat's ``shapes`` task: images, labels and masks (any tensors of these shapes do)."""
    return sat.shapes(train_size, seed=seed, split="train"), sat.shapes(test_size, seed=seed, split="test")


def augment(images, masks, generator, padding=2):
    """A random crop of the zero-padded image and a horizontal flip, drawn per sample,
    the same for the image and its mask (the CLI's `crop_padding = 2`, `flip = true`)."""
    n, _, h, w = images.shape
    both = F.pad(torch.cat([images, masks], 1), [padding] * 4)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    both = both[torch.arange(n)[:, None, None, None], torch.arange(both.shape[1])[None, :, None, None], rows, cols]
    return both[:, :3].contiguous(), both[:, 3:].contiguous()


def train_epoch(model, optimiser, data, epoch, epochs, method, generator, batch_size=128):
    saliency, objective = sat.Saliency("masks"), sat.Objective("ce")
    order = torch.randperm(len(data["labels"]), generator=generator)
    model.train()
    total, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        x, masks = augment(data["images"][index], data["masks"][index], generator)
        y = data["labels"][index]
        if method == "sat":
            maps = saliency(x, y, masks=masks, present=data["present"][index])
            inputs = sat.perturb(x, maps, 8 / 255, epoch, epochs, generator=generator, indices=index)
        else:
            inputs = x
        loss = objective(model, x, inputs, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        total += loss.item() * len(y)
        correct += (objective.logits.argmax(1) == y).sum().item()
    return total / len(order), correct / len(order)


def experiment(method, train, test, args):
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = SmallCnn(len(train["class_names"]))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    started = time.time()
    for epoch in range(args.epochs):
        loss, accuracy = train_epoch(model, optimiser, train, epoch, args.epochs, method, generator)
        print(f"{method}: epoch {epoch + 1}/{args.epochs} loss {loss:.4f} train accuracy {accuracy:.3f}", flush=True)
    seconds = time.time() - started
    figures = sat.evaluate(
        model,
        test["images"],
        test["labels"],
        attacks=["pgd"],
        eps=[2 / 255, 4 / 255, 8 / 255],
        max_samples=args.eval_samples,
        components={"pgd": {"steps": 10, "step_size": 2 / 255, "random_start": True}},
        class_names=test["class_names"],
        seed=args.seed,
    )
    robust = {f"{round(r['epsilon'] * 255)}/255": r["accuracy"] for r in figures["robust_accuracy"]}
    return {"method": method, "clean": figures["clean_accuracy"], "pgd": robust, "train_seconds": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/python-quickstart.json"))
    args = parser.parse_args()
    train, test = load_data(args.train_size, args.test_size, args.seed)
    results = [experiment(method, train, test, args) for method in ("standard", "sat")]
    print("\n| method | clean | PGD 2/255 | PGD 4/255 | PGD 8/255 |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['method']} | {r['clean']:.3f} | " + " | ".join(f"{v:.3f}" for v in r["pgd"].values()) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
