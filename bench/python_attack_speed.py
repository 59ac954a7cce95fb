"""Attack throughput from Python: `sat.Attack` on an eager `nn.Module` against torchattacks
3.5.1, in one process, on the model, images, batch and thread count of
bench/attack_speed.py (run `scripts/bench-attacks` first: it makes them in OUT_DIR).

Usage: .venv/bin/python bench/python_attack_speed.py OUT_DIR [--threads 1] [--reps 5]
           [--batch 500] [--rows fgsm,pgd-10,apgd-ce-100] [--device cpu|cuda]

Per row and repetition the two sides run back to back, their order alternating, each
timed over the whole test set (attack, then the prediction on its output, as
bench/attack_speed.py times torchattacks); the medians make the table. The model is
called back in Python by sat for every forward pass; the column "in the model" is the
share of the attack's time (the prediction afterwards left out) spent inside those calls (the model's forward, and its backward,
which autograd runs when sat asks for the input gradient), so the rest is sat's own:
the attack's tensor work, the plugin boundary and the bridge. Prints a Markdown table
and writes OUT_DIR/python-table.md.
"""
import argparse
import os
import statistics
import sys
import time

import torch

import sat

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attack_speed  # noqa: E402  (model, data, rows, and the torchattacks side)


def keys(row):
    """sat's keys of `row` (bench/attack_speed.py writes them as TOML lines)."""
    component, text = attack_speed.ROWS[row]["sat"]
    values = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            values[key] = {"true": True, "false": False}.get(value, None)
            if values[key] is None:
                values[key] = float(value) if "." in value or "e-" in value else int(value)
    return component, values


class Timed(torch.nn.Module):
    """The model, with the time spent in its forward passes (and, through a hook on the
    output, in their backward passes) added up."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.seconds = 0.0

    def forward(self, x):
        began = time.perf_counter()
        out = self.model(x)
        self.seconds += time.perf_counter() - began
        if out.requires_grad:
            marks = {}
            x_hook = x.register_hook(lambda g: self._backward_ends(marks, g)) if x.requires_grad else None
            out.register_hook(lambda g: marks.setdefault("began", time.perf_counter()) and g)
            marks["hook"] = x_hook
        return out

    def _backward_ends(self, marks, grad):
        if "began" in marks:
            self.seconds += time.perf_counter() - marks["began"]
        return grad


def sat_row(model, row, x, y, batch, device):
    """Seconds, robust accuracy and the share of the time spent in the model."""
    component, values = keys(row)
    timed = Timed(model)
    attack = sat.Attack(component, timed, eps=attack_speed.EPS, **values)
    attack_speed.sync(device)
    correct, attacking = 0, 0.0
    began = time.perf_counter()
    for start in range(0, x.shape[0], batch):
        xb, yb = x[start:start + batch], y[start:start + batch]
        attack_began = time.perf_counter()
        adv = attack(xb, yb)
        attacking += time.perf_counter() - attack_began
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == yb).sum())
    attack_speed.sync(device)
    seconds = time.perf_counter() - began
    return seconds, correct / x.shape[0], timed.seconds / attacking


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rows", default="fgsm,pgd-10,apgd-ce-100")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = attack_speed.load_model(args.out_dir, device)
    x, y = attack_speed.read_test_set(args.out_dir, device)
    with torch.no_grad():
        model(x[: args.batch])  # one pass before either side: first-use costs out of both
    lines = [
        "| attack | sat from Python images/s | torchattacks images/s | sat ÷ torchattacks "
        "| in the model (sat) | sat s (runs) | torchattacks s (runs) | robust acc. sat | robust acc. torchattacks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    for row in args.rows.split(","):
        ours, theirs, shares, robust = [], [], [], {}
        for rep in range(args.reps):
            sides = ["sat", "torchattacks"] if rep % 2 == 0 else ["torchattacks", "sat"]
            for side in sides:
                torch.manual_seed(rep)
                if side == "sat":
                    s, acc, share = sat_row(model, row, x, y, args.batch, device)
                    ours.append(s)
                    shares.append(share)
                else:
                    s, acc = attack_speed.torchattacks_row(model, row, x, y, args.batch, device)
                    theirs.append(s)
                robust.setdefault(side, acc)
            print(f"{row} rep {rep}: sat {ours[-1]:.2f} s, torchattacks {theirs[-1]:.2f} s", file=sys.stderr)
        n = x.shape[0]
        a, b = statistics.median(ours), statistics.median(theirs)
        worst = max(worst, abs(robust["sat"] - robust["torchattacks"]))
        lines.append(
            f"| {row} | {n / a:.1f} | {n / b:.1f} | {b / a:.2f} | {statistics.median(shares):.0%} "
            f"| {', '.join(f'{s:.2f}' for s in ours)} | {', '.join(f'{s:.2f}' for s in theirs)} "
            f"| {robust['sat']:.3f} | {robust['torchattacks']:.3f} |"
        )
    load = os.getloadavg()[0]
    lines.append("")
    lines.append(
        f"{x.shape[0]} images, batch {args.batch}, eps 8/255 (linf), {args.threads} thread(s), {device.type}; "
        f"{args.reps} runs per side, medians; torch {torch.__version__}, sat {sat.__version__}; "
        f"load average {load:.2f} at the end"
    )
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out_dir, "python-table.md"), "w") as f:
        f.write(table + "\n")
    sys.exit(1 if worst > attack_speed.TOLERANCE else 0)


if __name__ == "__main__":
    main()
