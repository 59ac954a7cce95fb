"""Reference FGSM and PGD in plain PyTorch, for the Rust attack plugins to match.

Usage: python crosscheck.py OUT_DIR

Writes OUT_DIR/model.pt (a TorchScript CNN with fixed weights) and OUT_DIR/reference.json:
the inputs, labels, and the FGSM (eps 8/255) and PGD (linf, eps 8/255, step 2/255,
5 steps, no random start) adversarial images, flattened, with their shapes.
Everything works in [0, 1] pixel space, in eval mode, like the plugins.
"""
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 8 / 255
STEP = 2 / 255
STEPS = 5


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


def fgsm(model, x, y, eps):
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def pgd(model, x, y, eps, step, steps):
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def flat(t):
    return {"shape": list(t.shape), "values": t.contiguous().view(-1).tolist()}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(1234)
    model = SmallNet()
    # Non-trivial batch-norm statistics, then eval mode for everything below.
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.1, 0.1)
        model.bn1.running_var.uniform_(0.5, 1.5)
    model.eval()
    x = torch.rand(6, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    scripted = torch.jit.script(model)
    scripted.save(os.path.join(out, "model.pt"))
    reference = {
        "torch_version": torch.__version__,
        "epsilon": EPS,
        "step_size": STEP,
        "steps": STEPS,
        "images": flat(x),
        "labels": y.tolist(),
        "fgsm": flat(fgsm(model, x, y, EPS)),
        "pgd": flat(pgd(model, x, y, EPS, STEP, STEPS)),
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f)


if __name__ == "__main__":
    main()
