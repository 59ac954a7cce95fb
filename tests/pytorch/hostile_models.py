"""Broken and hostile TorchScript models, for sat-host to refuse by name (never crash).

Usage: python hostile_models.py OUT_DIR

Writes OUT_DIR/<name>.pt, each mapping [N, 3, 16, 16] images to something that is not
usable logits for 5 classes:
- int64: integer "logits";
- detached: float logits cut from the graph (no input gradient);
- shape: [N, 7] logits;
- nan: NaN logits;
- tuple: a tuple instead of a tensor;
- nan_after_probe: finite on a batch of zeros (the load-time probe), NaN on real images;
- raises: a libtorch error (with its C++ frame trace) in the forward pass;
- raises_after_probe: a Python exception raised inside the script on real images.
"""
import os
import sys

import torch
import torch.nn as nn


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 16 * 16, 5)

    def logits(self, x):
        return self.fc(x.flatten(1))


class Int64(Base):
    def forward(self, x):
        return self.logits(x).long()


class Detached(Base):
    def forward(self, x):
        return self.logits(x).detach()


class Shape(Base):
    def forward(self, x):
        return torch.cat([self.logits(x), self.logits(x)[:, :2]], 1)


class Nan(Base):
    def forward(self, x):
        return self.logits(x) * float("nan")


class Tuple(Base):
    def forward(self, x):
        return (self.logits(x), self.logits(x))


class NanAfterProbe(Base):
    def forward(self, x):
        return self.logits(x) / (x.sum() == 0).float()


class Raises(Base):
    def forward(self, x):
        return self.logits(x).view(-1, 7)


class RaisesAfterProbe(Base):
    def forward(self, x):
        if bool(x.sum() != 0):
            raise RuntimeError("refusing real images")
        return self.logits(x)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, cls in [
        ("int64", Int64),
        ("detached", Detached),
        ("shape", Shape),
        ("nan", Nan),
        ("tuple", Tuple),
        ("nan_after_probe", NanAfterProbe),
        ("raises", Raises),
        ("raises_after_probe", RaisesAfterProbe),
    ]:
        torch.jit.script(cls().eval()).save(os.path.join(out, name + ".pt"))


if __name__ == "__main__":
    main()
