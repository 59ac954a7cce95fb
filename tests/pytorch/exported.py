"""Checks a model written by `sat-host export` in plain PyTorch.

Usage: python exported.py MODEL_PT ATTACK_SAFETENSORS METRICS_JSON

MODEL_PT is the exported TorchScript file; ATTACK_SAFETENSORS the file `sat-host attack`
wrote for the same run on the whole test set (`--samples 0`): its clean images, labels
and sat's logits. METRICS_JSON is the run's metrics.json. Asserts that PyTorch's logits
equal sat's to 1e-5 on the clean and the adversarial images at several batch sizes,
that the clean accuracy equals the run's, and that input gradients flow (what
AutoAttack needs). Prints a JSON summary; exits non-zero on any failure.
"""
import json
import struct
import sys

import numpy as np
import torch

TOLERANCE = 1e-5
DTYPES = {"F32": np.float32, "I64": np.int64}


def read_safetensors(path):
    """The tensors and the metadata of a safetensors file (no safetensors package)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    metadata = header.pop("__metadata__", {})
    data = raw[8 + n :]
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=DTYPES[info["dtype"]])
        tensors[name] = torch.from_numpy(array.reshape(info["shape"]).copy())
    return tensors, metadata


def logits_in_batches(model, images, batch):
    with torch.no_grad():
        return torch.cat([model(images[i : i + batch]) for i in range(0, len(images), batch)])


def main():
    model_path, attack_path, metrics_path = sys.argv[1:4]
    model = torch.jit.load(model_path, map_location="cpu")
    model.eval()
    tensors, metadata = read_safetensors(attack_path)
    with open(metrics_path) as f:
        metrics = json.load(f)
    n = len(tensors["labels"])
    differences = {}
    for images, expected in [("clean", "logits_clean"), ("adversarial", "logits_adversarial")]:
        for batch in sorted({n, 1, 7}):
            got = logits_in_batches(model, tensors[images], batch)
            assert got.shape == tensors[expected].shape, (got.shape, tensors[expected].shape)
            d = (got - tensors[expected]).abs().max().item()
            differences[f"{images}/batch {batch}"] = d
            assert d <= TOLERANCE, f"{images}, batch {batch}: logits differ by {d}"
    predicted = logits_in_batches(model, tensors["clean"], n).argmax(-1)
    accuracy = (predicted == tensors["labels"]).double().mean().item()
    assert abs(accuracy - metrics["clean_accuracy"]) < 1e-9, (accuracy, metrics["clean_accuracy"])
    x = tensors["clean"][:4].clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(x), tensors["labels"][:4]).backward()
    assert x.grad is not None and x.grad.abs().sum().item() > 0, "no input gradient"
    print(json.dumps({
        "samples": n,
        "clean_accuracy": accuracy,
        "max_difference": max(differences.values()),
        "attack": metadata.get("attack"),
    }))


if __name__ == "__main__":
    main()
