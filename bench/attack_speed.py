"""Attack throughput: torchattacks 3.5.1 against `sat-host eval`, on the same model, images,
batch, budget and threads, run back to back.

Usage: .venv/bin/python bench/attack_speed.py OUT_DIR --sat target/release/sat-host
           [--samples 1000] [--batch 500] [--threads 1] [--reps 5] [--epochs 3]
           [--rows fgsm,pgd-10,apgd-ce-100] [--device cpu|cuda] [--json FILE]

What it does, in one run:

- data: the synthetic 10-class set of `tests/pytorch/autoattack_reference.py` (CIFAR-10
  binary format, 32 x 32 RGB; Fashion-MNIST cannot be downloaded here), with exactly
  --samples test images, so that `[eval] max_samples = 0` makes sat attack the same ones;
- model: a Fashion-MNIST-style CNN (normalisation inside, conv 16 - pool - conv 32 - pool
  - linear 64 - linear 10), trained for --epochs epochs with Adam, TorchScript-traced
  for sat; torchattacks attacks the eager module (parameters frozen, eval mode);
- rows (eps 8/255, linf): `fgsm` (FGSM), `pgd-10` (PGD, step 2/255, random start),
  `apgd-ce-100` (APGD-CE, 100 steps, rho 0.75, one restart); sat's `fgsm`, `pgd` and
  `apgd-ce` set alike;
- --reps repetitions of every row, each side a fresh process (`sat-host eval`, and this
  script with --worker for torchattacks), the two one after the other and their order
  alternating (A B, B A, ...), so that other load on the machine hits both alike; the
  medians make the table.

Threads: `torch.set_num_threads(--threads)` here; sat-host runs with OMP_NUM_THREADS and
MKL_NUM_THREADS set to the same number (libtorch sizes its intra-op pool from them).

Timing: both sides start alike: load the model and the test set, one clean pass over it
in the evaluation's batches (sat's clean accuracy), then the timed attack phase. For
torchattacks that is the loop over the batches (attack, then the prediction on the
adversarial images); for sat the span from its log line `evaluating <attack> at eps …`
to the robust-accuracy line (the batches: attack, adversarial and clean predictions,
tallies). Process start-up, plugin loading and reading the model and data are left out
of both; each process's wall time is reported too. Neither side gets an untimed warm-up
batch: the first batch's one-off costs (oneDNN kernel creation for the backward pass,
autograd's first use) fall in both.

Robust accuracies: both are printed; FGSM is deterministic (they must be equal within
0.005, the cross-check's tolerance), PGD and APGD draw their random starts from
different generators (same tolerance; differences are the seeds'). The exit status is
non-zero when a difference exceeds it. Writes OUT_DIR/table.md and OUT_DIR/results.json.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import torchattacks

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "pytorch"))
import autoattack_reference as reference  # noqa: E402  (data set and training loop)

EPS = 8 / 255
PGD_STEP = 2 / 255
TOLERANCE = 0.005

# Every row: torchattacks' class and arguments, sat's component and its TOML keys.
ROWS = {
    "fgsm": {
        "torchattacks": ("FGSM", {"eps": EPS}),
        "sat": ("fgsm", ""),
    },
    "pgd-10": {
        "torchattacks": ("PGD", {"eps": EPS, "alpha": PGD_STEP, "steps": 10, "random_start": True}),
        "sat": ("pgd", f"steps = 10\nstep_size = {PGD_STEP!r}\nrandom_start = true\n"),
    },
    "apgd-ce-100": {
        "torchattacks": ("APGD", {"eps": EPS, "norm": "Linf", "steps": 100, "n_restarts": 1,
                                  "loss": "ce", "rho": 0.75, "seed": 0}),
        "sat": ("apgd-ce", "steps = 100\nrho = 0.75\nrestarts = 1\n"),
    },
}


class BenchNet(nn.Module):
    """A Fashion-MNIST-style CNN for 3 x 32 x 32 inputs, normalisation inside."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(reference.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(reference.STD).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 8 * 8, 64)
        self.fc2 = nn.Linear(64, reference.CLASSES)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def read_test_set(out_dir, device):
    """The test images (float32 in [0, 1]) and labels from the CIFAR-10 file sat reads."""
    with open(os.path.join(out_dir, "cifar10", "test_batch.bin"), "rb") as f:
        records = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    records = records.view(-1, 1 + 3 * reference.SIDE * reference.SIDE)
    x = records[:, 1:].reshape(-1, 3, reference.SIDE, reference.SIDE).float() / 255
    return x.to(device), records[:, 0].long().to(device)


def load_model(out_dir, device):
    """The eager model with the weights of model.pt, parameters frozen, in eval mode."""
    model = BenchNet()
    model.load_state_dict(torch.load(os.path.join(out_dir, "model_state.pt")))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(device)


def worker(args):
    """One torchattacks measurement in this process: prints its JSON line."""
    began = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_model(args.out_dir, device)
    x, y = read_test_set(args.out_dir, device)
    # sat's clean pass, in the same batches: the model has run once before the attack.
    with torch.no_grad():
        for start in range(0, x.shape[0], args.batch):
            model(x[start:start + args.batch]).argmax(1)
    cpu = time.process_time()
    seconds, robust = torchattacks_row(model, args.worker, x, y, args.batch, device)
    print(json.dumps({"seconds": seconds, "cpu_seconds": time.process_time() - cpu,
                      "robust": robust, "process_seconds": time.perf_counter() - began}))


def torchattacks_row(model, row, x, y, batch, device):
    """Seconds and robust accuracy of torchattacks on (x, y)."""
    cls, kwargs = ROWS[row]["torchattacks"]
    attack = getattr(torchattacks, cls)(model, **kwargs)
    sync(device)
    correct = 0
    begin = time.perf_counter()
    for start in range(0, x.shape[0], batch):
        xb, yb = x[start:start + batch], y[start:start + batch]
        adv = attack(xb, yb)
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == yb).sum())
    sync(device)
    return time.perf_counter() - begin, correct / x.shape[0]


def sat_config(out_dir, row, batch, device):
    component, keys = ROWS[row]["sat"]
    return f"""# bench/attack_speed.py: sat's `{component}` as torchattacks' {ROWS[row]["torchattacks"][0]}
name = "attack-speed-{row}"
seed = 0
device = "{device}"
[data]
dataset = "cifar10"
root = {json.dumps(os.path.join(out_dir, "cifar10"))}
image_size = {reference.SIDE}
[model]
torchscript = {json.dumps(os.path.join(out_dir, "model.pt"))}
[eval]
attacks = ["{component}"]
epsilons = [{EPS!r}]
max_samples = 0
batch_size = {batch}
alignment = false
[components.{component}]
{keys}"""


LOG_LINE = re.compile(r"^\[\s*([0-9.]+)s\s+\w+\s*\]\s*(.*)$")


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sat_row(sat, out_dir, row, rep, threads):
    """sat's attack phase (seconds, CPU seconds), process seconds, clean and robust
    accuracy. The phase runs from the log line `evaluating <attack> at eps …` to the
    robust-accuracy line: the log's own timestamps time it, and the process's CPU time
    is read from /proc as each of the two lines arrives."""
    component = ROWS[row]["sat"][0]
    config = os.path.join(out_dir, f"sat-{row}.toml")
    run_dir = os.path.join(out_dir, "sat-runs", f"{row}-{rep}")
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               SAT_LOG="info")
    begin = time.perf_counter()
    proc = subprocess.Popen([sat, "eval", "--config", config, "--out", run_dir], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, start, end = [], None, None
    for line in proc.stderr:
        log.append(line)
        m = LOG_LINE.match(line.rstrip("\n"))
        if not m:
            continue
        t, text = float(m.group(1)), m.group(2)
        if text.startswith(f"evaluating {component} at eps"):
            start = (t, cpu_seconds(proc.pid))
        elif text.startswith(f"{component} (") and "robust accuracy" in text:
            end = (t, cpu_seconds(proc.pid))
    proc.wait()
    wall = time.perf_counter() - begin
    if proc.returncode != 0:
        sys.exit(f"sat-host eval failed ({row}):\n{''.join(log)}")
    if start is None or end is None:
        sys.exit(f"sat-host eval ({row}): no attack timing in its log:\n{''.join(log)}")
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    robust = metrics["robust_accuracy"][0]["accuracy"]
    return {"seconds": end[0] - start[0], "cpu_seconds": end[1] - start[1],
            "process_seconds": wall, "clean": metrics["clean_accuracy"], "robust": robust}


def torchattacks_process(out_dir, row, args):
    """Runs `worker` in a fresh process; its seconds, robust accuracy, wall time."""
    begin = time.perf_counter()
    threads = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               OPENBLAS_NUM_THREADS=threads)
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), out_dir, "--worker", row,
         "--threads", threads, "--batch", str(args.batch), "--device", args.device],
        env=env, capture_output=True, text=True)
    wall = time.perf_counter() - begin
    if done.returncode != 0:
        sys.exit(f"torchattacks worker failed ({row}):\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = wall
    return result


def load():
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--sat", help="the sat-host binary (required)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", metavar="ROW", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not args.sat:
        parser.error("--sat is required")
    rows = [r for r in args.rows.split(",") if r]
    for r in rows:
        if r not in ROWS:
            sys.exit(f"unknown row {r}; rows: {', '.join(ROWS)}")
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    began = time.time()

    train_x, train_y, test_x, test_y = reference.make_dataset(
        os.path.join(out_dir, "cifar10"), args.samples)
    to_float = lambda b: b.float() / 255  # noqa: E731  (sat reads the bytes alike)
    torch.manual_seed(3)
    model = BenchNet()
    reference.train(model, to_float(train_x), train_y, epochs=args.epochs)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = to_float(test_x), test_y
    torch.jit.trace(model, x[:2]).save(os.path.join(out_dir, "model.pt"))
    torch.save(model.state_dict(), os.path.join(out_dir, "model_state.pt"))
    model = model.to(device)
    x, y = x.to(device), y.to(device)
    clean = reference.accuracy(model, x, y)
    print(f"model: clean accuracy {clean:.4f} on {args.samples} images "
          f"({time.time() - began:.1f} s to make and train)", file=sys.stderr)
    for row in rows:
        with open(os.path.join(out_dir, f"sat-{row}.toml"), "w") as f:
            f.write(sat_config(out_dir, row, args.batch, args.device))

    runs = {row: {"sat": [], "torchattacks": []} for row in rows}
    loads = [load()]
    for rep in range(args.reps):
        for i, row in enumerate(rows):
            sides = ["torchattacks", "sat"]
            if (rep + i) % 2:
                sides.reverse()
            for side in sides:
                if side == "sat":
                    result = sat_row(args.sat, out_dir, row, rep, args.threads)
                else:
                    result = torchattacks_process(out_dir, row, args)
                runs[row][side].append(result)
                print(f"rep {rep} {row:12} {side:12} {result['seconds']:8.2f} s "
                      f"{result['cpu_seconds']:8.2f} s CPU  robust {result['robust']:.4f}",
                      file=sys.stderr)
            loads.append(load())

    n = args.samples
    header = ("| attack | sat images/s | torchattacks images/s | sat ÷ torchattacks "
              "| per CPU-second: sat ÷ torchattacks | sat s (runs) | torchattacks s (runs) "
              "| process s (sat / torchattacks) | robust acc. sat | robust acc. torchattacks |")
    table = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    failures = []
    summary = {}
    for row in rows:
        s, t = runs[row]["sat"], runs[row]["torchattacks"]
        med = lambda xs, key: statistics.median(r[key] for r in xs)  # noqa: E731
        s_rate, t_rate = n / med(s, "seconds"), n / med(t, "seconds")
        cpu_ratio = med(t, "cpu_seconds") / med(s, "cpu_seconds")
        s_rob, t_rob = s[0]["robust"], t[0]["robust"]
        fmt = lambda xs: ", ".join(f"{r['seconds']:.2f}" for r in xs)  # noqa: E731
        table.append(f"| {row} | {s_rate:.1f} | {t_rate:.1f} | {s_rate / t_rate:.2f} "
                     f"| {cpu_ratio:.2f} | {fmt(s)} | {fmt(t)} "
                     f"| {med(s, 'process_seconds'):.1f} / {med(t, 'process_seconds'):.1f} "
                     f"| {s_rob:.3f} | {t_rob:.3f} |")
        summary[row] = {"sat_images_per_s": s_rate, "torchattacks_images_per_s": t_rate,
                        "ratio": s_rate / t_rate, "cpu_ratio": cpu_ratio,
                        "sat_robust": s_rob, "torchattacks_robust": t_rob}
        if abs(s_rob - t_rob) > TOLERANCE:
            failures.append(f"{row}: robust accuracy sat {s_rob:.4f}, torchattacks {t_rob:.4f}")
        for r in s:
            if abs(r["clean"] - clean) > TOLERANCE:
                failures.append(f"{row}: clean accuracy sat {r['clean']:.4f}, PyTorch {clean:.4f}")
    avg = [statistics.mean(l[i] for l in loads) for i in range(3)]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?") if os.path.exists("/proc/cpuinfo") else "?"
    footer = (f"{n} images, batch {args.batch}, eps 8/255 (linf), {args.threads} thread(s), "
              f"{args.device}; {args.reps} runs per side, medians; clean accuracy {clean:.3f}; "
              f"torch {torch.__version__}, torchattacks {torchattacks.__version__}; "
              f"{os.cpu_count()} CPUs ({cpu}); load average during the runs "
              f"{avg[0]:.2f} (1-min samples {', '.join(f'{l[0]:.2f}' for l in loads)})")
    text = "\n".join(table) + "\n\n" + footer + "\n"
    print(text)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text)
    results = {"rows": summary, "runs": runs, "clean_accuracy": clean, "samples": n,
               "batch": args.batch, "threads": args.threads, "device": args.device,
               "loadavg": loads, "torch": torch.__version__,
               "torchattacks": torchattacks.__version__}
    for path in [os.path.join(out_dir, "results.json")] + ([args.json] if args.json else []):
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    if failures:
        print("beyond the tolerance " + str(TOLERANCE) + ":\n" + "\n".join(failures),
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
