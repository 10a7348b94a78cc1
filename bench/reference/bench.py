"""PyTorch reference of `detnas bench` (eager mode, same machine, same threads).

The supernet is the official DetNAS definition (megvii-model/DetNAS Supernet-ImageNet
`shuffle_blocks.py`, `detnasnet.py`; restated in crates/nn/tests/fixtures/golden/make_golden.py
with detnas's parameter names, which pins detnas to it numerically). Items, shapes, the path
sequence (exported by detnas: `paths.json`), warm-up and repetitions follow `detnas bench`.

    python bench.py ITEM --paths paths.json --space space.json [--reps 5] [--threads N]
                         [--memory-format nchw|channels-last] [--precision fp32|bf16]
    python bench.py check --weights supernet.safetensors --io io.safetensors --space space.json

Prints one JSON line like detnas: the steady-state throughput (median, min, max of the second
run of each path) and `first_seconds` / `warm_seconds` (median first run of a new path / median
second run), peak RSS. bf16 is autocast as in detnas: on the CPU only for forwards without
gradients.
"""
import contextlib
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
# The official blocks with detnas's parameter names (the golden-test restatement), and the
# safetensors reader of the export test.
sys.path.insert(0, os.path.join(ROOT, "crates", "nn", "tests", "fixtures", "golden"))
sys.path.insert(0, os.path.join(ROOT, "crates", "pipeline", "tests", "official"))
from make_golden import Op, conv_bn  # noqa: E402
from check_official import read_safetensors  # noqa: E402

SMALL = {"name": "small", "stem": 16, "widths": [64, 160, 320, 640], "depths": [4, 4, 8, 4], "last_conv": 1024,
         "choices": [0, 1, 2, 3]}

class Supernet(nn.Module):
    def __init__(self, space, classes):
        super().__init__()
        self.stem = conv_bn(3, space["stem"], 3, 2, False, bias=True, relu=True)
        blocks, cin = [], space["stem"]
        for w, d in zip(space["widths"], space["depths"]):
            for j in range(d):
                ops = nn.ModuleDict({str(c): Op(cin, w, 2 if j == 0 else 1, c) for c in space.get("choices", [0, 1, 2, 3])})
                blocks.append(ops)
                cin = w
        self.features = nn.ModuleList(blocks)
        self.head = nn.Module()
        self.head.last_conv = conv_bn(cin, space["last_conv"], 1, 1, False, bias=True, relu=True)
        self.head.fc = nn.Linear(space["last_conv"], classes)

    def forward(self, x, path):
        x = self.stem(x)
        for i, c in enumerate(path):
            x = self.features[i][str(c)](x)
        y = self.head.last_conv(x)
        y = nn.functional.dropout2d(y, 0.2, self.training)
        return self.head.fc(y.mean(dim=(2, 3)))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synchronizer(dev):
    """Waits for the device's queued work (CUDA kernels run asynchronously)."""
    return torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)


def describe(dev):
    return f"cuda ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "cpu"


def gpu_memory(dev):
    """Peak GPU memory allocated by tensors (PyTorch's caching allocator), when on a GPU."""
    return {"gpu_peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20} if dev.type == "cuda" else {}


def timed_paths(reps, f, sync=lambda: None):
    """`detnas bench`'s protocol: f(0) as warm-up, then per repetition r a first run of path r
    and a second one (steady state). Returns (first-run seconds, second-run seconds)."""
    f(0)
    sync()
    first, warm = [], []
    for r in range(1, reps + 1):
        for out in (first, warm):
            s = time.perf_counter()
            f(r)
            sync()
            out.append(time.perf_counter() - s)
    return first, warm


def amp(dev, precision, training):
    """bf16 autocast as detnas applies it (not for CPU training), else nothing."""
    if precision != "bf16" or (training and dev.type == "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)


def layout(t, memory_format):
    return t.to(memory_format=torch.channels_last) if memory_format == "channels-last" else t


def timing_fields(first, warm, per):
    s = sorted(warm)
    return {"median": per / s[len(s) // 2], "min": per / s[-1], "max": per / s[0], "median_seconds": s[len(s) // 2],
            "reps": len(warm), "first_seconds": sorted(first)[len(first) // 2], "warm_seconds": s[len(s) // 2]}


def timed(reps, f, sync=lambda: None):
    f(0)
    sync()
    t = []
    for r in range(1, reps + 1):
        s = time.perf_counter()
        f(r)
        sync()
        t.append(time.perf_counter() - s)
    return t


def sgd_step(net, path, lr=0.1, momentum=0.9, wd=4e-5, bufs={}):
    """detnas's PathSgd: momentum SGD on the sampled path's parameters only (plus stem and
    head), weight decay on conv/FC weights."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.grad is None:
                continue
            d = p.grad + wd * p if (name.endswith(".weight") and p.dim() >= 2) else p.grad.clone()
            if name in bufs:
                bufs[name].mul_(momentum).add_(d)
                d = bufs[name]
            else:
                bufs[name] = d.clone()
            p.sub_(lr * d)
            p.grad = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("item")
    ap.add_argument("--paths")
    ap.add_argument("--space")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--weights")
    ap.add_argument("--io")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timed items; the check runs on the CPU)")
    ap.add_argument("--memory-format", default="nchw", choices=["nchw", "channels-last"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    a = ap.parse_args()
    dev = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    demo = json.load(open(a.space)) if a.space else None
    if a.item == "check":
        net = Supernet(demo, 10)
        state = read_safetensors(a.weights)
        missing = net.load_state_dict({k: v for k, v in state.items()}, strict=False)
        assert not missing.missing_keys or all(k.endswith("num_batches_tracked") for k in missing.missing_keys), missing
        io = read_safetensors(a.io)
        net.eval()
        worst = 0.0
        for p in json.load(open(a.paths)):
            with torch.no_grad():
                y = net(io["x"], [int(c) for c in p])
            ref = io[f"logits.{p}"]
            worst = max(worst, ((y - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item())
        print(json.dumps({"item": "check", "max_relative_difference": worst}))
        sys.exit(0 if worst < 1e-4 else 1)
    paths = [[int(c) for c in p] for p in json.load(open(a.paths))]
    small = a.item.endswith("small")
    space, side, classes = (SMALL, 224, 1000) if small else (demo, 32, 10)
    net = layout(Supernet(space, classes).to(dev), a.memory_format)
    sync = synchronizer(dev)
    if a.item.startswith("cls-"):
        batch = 32 if small else 64
        x = layout(torch.randn(batch, 3, side, side, device=dev), a.memory_format)
        y = torch.randint(0, classes, (batch,), device=dev)
        if "train" in a.item:
            net.train()
            lossf = nn.CrossEntropyLoss()

            def step(r):
                with amp(dev, a.precision, True):
                    logits = net(x, paths[r])
                loss = lossf(logits.float(), y)
                loss.backward()
                sgd_step(net, paths[r])
        else:
            net.eval()

            def step(r):
                with torch.no_grad(), amp(dev, a.precision, False):
                    net(x, paths[r])
        first, t = timed_paths(a.reps, step, sync)
        per = batch
    elif a.item.startswith("recal-"):
        batch, n = (32, 256) if small else (200, 1000)
        xs = [layout(torch.randn(batch, 3, side, side, device=dev), a.memory_format) for _ in range(n // batch)]

        def step(r):
            # The official procedure: reset, then training-mode forwards with cumulative
            # averaging (momentum None), no gradients.
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None
            net.train()
            with torch.no_grad(), amp(dev, a.precision, False):
                for x in xs:
                    net(x, paths[r])
        first, t = timed_paths(a.reps, step, sync)
        per = n
    else:
        print(json.dumps({"item": a.item, "impl": "pytorch", "error": "not implemented in the reference"}))
        return
    print(json.dumps({"item": a.item, "impl": "pytorch", "unit": "img/s", **timing_fields(first, t, per),
                      "threads": torch.get_num_threads(), "device": describe(dev), "peak_rss_mb": peak_rss_mb(),
                      "memory_format": a.memory_format.replace("-", ""), "precision": a.precision,
                      "torch": torch.__version__, **gpu_memory(dev)}))


if __name__ == "__main__":
    main()
