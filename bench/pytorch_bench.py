"""The rows of `sat-host bench` in plain PyTorch eager, for the Rust/PyTorch ratio.

Usage: .venv/bin/python bench/pytorch_bench.py --models small-cnn,preact-resnet18 \
           [--width 32] [--batch 128] [--warmup 2] [--steps 5] [--json FILE] \
           [--device cuda] [--amp] [--no-cudnn-benchmark] [--flops]

Same models (small CNN, PreAct ResNet-18), same batch, same threads (torch's default,
like libtorch's in sat-host), the same step per row: attacks in eval mode on images in
[0, 1] (eps 8/255, step 2/255; FGSM-RS step 10/255), then one Adam step (lr 1e-3) on the
model in train mode. APGD-CE has no row here (no reference implementation in plain
PyTorch in this repository). Peak RSS per row uses Linux's clear_refs, as sat-host does.

On CUDA (`--device cuda`): cuDNN benchmark mode is on unless `--no-cudnn-benchmark`
(sat-host's `cudnn_benchmark` default), `--amp` runs the training forward passes under
float16 autocast with a GradScaler (sat-host's `train.amp`), the device is synchronised
around each timed step, and each row also reports the peak CUDA memory allocated.
`--flops` counts the floating-point operations of one step of each row
(torch.utils.flop_counter: convolutions and matrix products, forward and backward) for
the fraction of the card's matrix rate (bench/matmul_rate.py).
"""
import argparse
import copy
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 8 / 255
STEP = 2 / 255


def conv_bn(c_in, c_out):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


def small_cnn(width, classes):
    w1, w2, w3 = width, 2 * width, 4 * width
    return nn.Sequential(
        conv_bn(3, w1), conv_bn(w1, w1), nn.MaxPool2d(2),
        conv_bn(w1, w2), conv_bn(w2, w2), nn.MaxPool2d(2),
        conv_bn(w2, w3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w3, classes),
    )


class PreActBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.b1 = nn.BatchNorm2d(c_in)
        self.r1 = nn.ReLU()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c_out)
        self.r2 = nn.ReLU()
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.sc = (
            nn.Conv2d(c_in, c_out, 1, stride, bias=False)
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x):
        a = self.r1(self.b1(x))
        skip = self.sc(a) if self.sc is not None else x
        return self.c2(self.r2(self.b2(self.c1(a)))) + skip


def preact_resnet18(width, classes):
    layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False)]
    c = width
    for stage, w in enumerate([width, 2 * width, 4 * width, 8 * width]):
        for i in range(2):
            layers.append(PreActBlock(c, w, 2 if (i == 0 and stage > 0) else 1))
            c = w
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(c, classes)]
    return nn.Sequential(*layers)


def input_grad(model, x, loss_fn):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(model(x)), x)
    return g


def pgd(model, x, y, steps, random_start=True):
    model.eval()
    adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1) if random_start else x
    for _ in range(steps):
        g = input_grad(model, adv, lambda z: F.cross_entropy(z, y, reduction="sum"))
        adv = torch.min(torch.max(adv + STEP * g.sign(), x - EPS), x + EPS).clamp(0, 1)
    model.train()
    return adv.detach()


def fgsm_rs(model, x, y):
    model.eval()
    start = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    g = input_grad(model, start, lambda z: F.cross_entropy(z, y, reduction="sum"))
    adv = torch.min(torch.max(start + 10 / 255 * g.sign(), x - EPS), x + EPS).clamp(0, 1)
    model.train()
    return adv.detach()


def trades_inner(model, x, steps):
    model.eval()
    with torch.no_grad():
        p_clean = F.softmax(model(x), 1)
    adv = x + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        g = input_grad(
            model, adv,
            lambda z: F.kl_div(F.log_softmax(z, 1), p_clean, reduction="sum"),
        )
        adv = torch.min(torch.max(adv + STEP * g.sign(), x - EPS), x + EPS).clamp(0, 1)
    model.train()
    return adv.detach()


def fgsm(model, x, y):
    model.eval()
    g = input_grad(model, x, lambda z: F.cross_entropy(z, y, reduction="sum"))
    model.train()
    return (x + EPS * g.sign()).clamp(0, 1).detach()


def rrr_loss(model, x, y, saliency, lam=10.0):
    """Right for the Right Reasons: CE + lam * mean_n |(1 - A) * d/dx sum_k log p_k|^2."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (g,) = torch.autograd.grad(F.log_softmax(logits, 1).sum(), x, create_graph=True)
    a = (saliency + 1) / 2
    penalty = ((1 - a) * g).pow(2).flatten(1).sum(1).mean()
    return F.cross_entropy(logits, y) + lam * penalty


def input_gradient_loss(model, x, y, lam=1.0):
    """Double backpropagation: CE + lam * mean_n |d CE_n / dx|^2."""
    x = x.detach().requires_grad_(True)
    ce = F.cross_entropy(model(x), y, reduction="none")
    (g,) = torch.autograd.grad(ce.sum(), x, create_graph=True)
    return ce.mean() + lam * g.pow(2).flatten(1).sum(1).mean()


def gradalign_loss(model, x, inputs, y, lam=0.2):
    """GradAlign: CE(inputs) + lam * (1 - cos(grad at x, grad at x + eta)), as the
    reference code: the first gradient detached, the second with create_graph."""
    g1 = input_grad(model, x, lambda z: F.cross_entropy(z, y, reduction="sum"))
    eta = torch.empty_like(x).uniform_(-EPS, EPS)
    x2 = (x + eta).clamp(0, 1).detach().requires_grad_(True)
    (g2,) = torch.autograd.grad(F.cross_entropy(model(x2), y, reduction="sum"), x2,
                                create_graph=True)
    cos = F.cosine_similarity(g1.flatten(1), g2.flatten(1), 1)
    return F.cross_entropy(model(inputs), y) + lam * (1 - cos.mean())


def sat_step(x, saliency, p=0.5):
    signs = torch.randint(0, 2, x.shape, device=x.device).float() * 2 - 1
    use = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
    g = torch.where(use, saliency.expand_as(x), signs)
    return (x - EPS * g).clamp(0, 1)


def guided_backprop(teacher, x, y):
    grads = []

    def hook(module, grad_in, grad_out):
        return (grad_in[0].clamp(min=0),)

    handles = [m.register_full_backward_hook(hook) for m in teacher.modules()
               if isinstance(m, nn.ReLU)]
    x = x.detach().requires_grad_(True)
    score = teacher(x).gather(1, y[:, None]).sum()
    (g,) = torch.autograd.grad(score, x)
    for h in handles:
        h.remove()
    return g.sign()


def peak_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


ROWS = ["standard", "sat-masks", "sat-gradient", "fgsm-rs", "pgd-7", "trades-10",
        "rrr-masks", "input-gradient", "fgsm-gradalign", "eval-pgd-20"]
# Rows whose loss is not plain cross-entropy on the inputs.
OBJECTIVE_ROWS = {"rrr-masks", "input-gradient", "fgsm-gradalign"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="small-cnn,preact-resnet18")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--no-cudnn-benchmark", action="store_true")
    ap.add_argument("--flops", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    amp = args.amp and cuda
    torch.backends.cudnn.benchmark = cuda and not args.no_cudnn_benchmark
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"device {device}, amp {amp}, cudnn benchmark {torch.backends.cudnn.benchmark}")
    classes, n = 6, args.batch * (args.warmup + args.steps + 1)
    data = torch.rand(n, 3, 32, 32)
    labels = torch.randint(0, classes, (n,))
    masks = (torch.rand(n, 1, 32, 32) > 0.5).float() * 2 - 1

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    out = []
    for arch in args.models.split(","):
        for row in args.rows.split(","):
            make = small_cnn if arch == "small-cnn" else preact_resnet18
            model = make(args.width, classes).to(device)
            teacher = copy.deepcopy(model).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler("cuda", enabled=amp)
            model.train()
            reset_peak()
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)

            def step(x, y, m):
                if row == "eval-pgd-20":
                    adv = pgd(model, x, y, 20)
                    model.eval()
                    with torch.no_grad():
                        int(model(adv).argmax(1).sum())
                    model.train()
                    return
                if row == "standard":
                    inputs = x
                elif row == "sat-masks":
                    inputs = sat_step(x, m)
                elif row == "sat-gradient":
                    inputs = sat_step(x, guided_backprop(teacher, x, y))
                elif row == "fgsm-rs":
                    inputs = fgsm_rs(model, x, y)
                elif row == "pgd-7":
                    inputs = pgd(model, x, y, 7)
                elif row == "trades-10":
                    inputs = trades_inner(model, x, 10)
                elif row in ("rrr-masks", "input-gradient"):
                    inputs = x
                elif row == "fgsm-gradalign":
                    inputs = fgsm(model, x, y)
                else:
                    raise SystemExit(f"unknown row {row}")
                if row in OBJECTIVE_ROWS:
                    with torch.autocast("cuda", torch.float16, enabled=amp):
                        if row == "rrr-masks":
                            loss = rrr_loss(model, inputs, y, m)
                        elif row == "input-gradient":
                            loss = input_gradient_loss(model, inputs, y)
                        else:
                            loss = gradalign_loss(model, x, inputs, y)
                    opt.zero_grad(set_to_none=False)
                    scaler.scale(loss.float()).backward()
                    scaler.step(opt)
                    scaler.update()
                    loss.item()
                    return
                with torch.autocast("cuda", torch.float16, enabled=amp):
                    logits = model(inputs).float()
                    if row == "trades-10":
                        clean = model(x).float()
                if row == "trades-10":
                    kl = F.kl_div(F.log_softmax(logits, 1), F.softmax(clean, 1),
                                  reduction="batchmean")
                    loss = F.cross_entropy(clean, y) + 6.0 * kl
                else:
                    loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=False)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                loss.item()

            timed = 0.0
            for i in range(args.warmup + args.steps):
                sl = slice(i * args.batch, (i + 1) * args.batch)
                x, y, m = data[sl].to(device), labels[sl].to(device), masks[sl].to(device)
                sync()
                start = time.perf_counter()
                step(x, y, m)
                sync()
                if i >= args.warmup:
                    timed += time.perf_counter() - start
            r = {
                "model": arch,
                "row": row,
                "images_per_sec": args.steps * args.batch / timed,
                "seconds_per_step": timed / args.steps,
                "peak_rss_mib": peak_mib(),
                "device": str(device),
                "amp": amp,
                "batch": args.batch,
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
            }
            if cuda:
                r["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            if args.flops:
                from torch.utils.flop_counter import FlopCounterMode

                sl = slice(n - args.batch, n)
                try:
                    with FlopCounterMode(display=False) as counter:
                        step(data[sl].to(device), labels[sl].to(device), masks[sl].to(device))
                    r["flops_per_step"] = counter.get_total_flops()
                except RuntimeError as e:  # the counter's module hooks vs. backward hooks
                    print(f"{arch} {row}: FLOPs not counted ({str(e).splitlines()[0][:80]})")
                    r["flops_per_step"] = None
            print(f"{arch} {row}: {r['images_per_sec']:.1f} images/s, "
                  f"{r['seconds_per_step']:.3f} s/step, peak RSS {r['peak_rss_mib']:.0f} MiB",
                  flush=True)
            out.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
