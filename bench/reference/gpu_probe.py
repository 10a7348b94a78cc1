"""GPU probes for bench/gpu_audit.sh (PyTorch only; no detnas): each prints JSON lines.

    python gpu_probe.py versions                 torch, CUDA, cuDNN, torchvision and what its library links
    python gpu_probe.py conv [--layouts ...]     the Small space's convolutions at 800x1344 batch 2: first and
                                                 second call, forward and backward, NCHW and channels-last
    python gpu_probe.py syncs --dir EXPORT       host synchronisations of one warm training and inference step of
                                                 each reference detector (torch.cuda.set_sync_debug_mode("warn"))
    python gpu_probe.py ops                      torchvision NMS (1,500 / 3,000 / 5,000 boxes) and RoIAlign (64 /
                                                 1,000 RoIs per image on P2-P5), the sizes of `detnas bench nms-N /
                                                 roi-align-K`

Questions they settle (see the GPU-speed issue and bench/gpu_audit.sh): whether the first use of a
channels-last depthwise convolution is expensive (cuDNN execution-plan building) and NCHW's is not;
how often the PyTorch reference itself synchronises; what torchvision's kernels cost at the sizes
detnas's device-side NMS and RoIAlign are measured at.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def emit(**kw):
    print(json.dumps(kw), flush=True)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(f):
    sync()
    t = time.perf_counter()
    out = f()
    sync()
    return time.perf_counter() - t, out


def versions():
    import torchvision
    tv = os.path.dirname(torchvision.__file__)
    libs = sorted(f for f in os.listdir(tv) if f.endswith(".so"))
    needed, python_syms = {}, {}
    for lib in libs:
        path = os.path.join(tv, lib)
        try:
            d = subprocess.run(["readelf", "-d", path], capture_output=True, text=True).stdout
            needed[lib] = [l.split("[")[1].rstrip("]") for l in d.splitlines() if "NEEDED" in l]
            u = subprocess.run(["nm", "-DC", "--undefined-only", path], capture_output=True, text=True).stdout
            python_syms[lib] = [l.split()[-1] for l in u.splitlines() if "Py" in l or "python" in l or "THP" in l][:20]
        except FileNotFoundError as e:
            needed[lib] = f"tool missing: {e}"
    emit(probe="versions", torch=torch.__version__, cuda=torch.version.cuda,
         cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
         torchvision=torchvision.__version__, gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
         torchvision_libraries=libs, needed=needed, python_symbols=python_syms)


# The Small space at 800x1344, batch 2: stage widths 64/160/320/640 at strides 4/8/16/32; a
# ShuffleNetV2 block's branch works on half the width ("mid"). (name, in, out, k, stride, groups,
# input height, width)
CONVS = [
    ("dw3-s1-c80", 80, 80, 3, 1, 80, 100, 168),
    ("dw5-s1-c80", 80, 80, 5, 1, 80, 100, 168),
    ("dw7-s1-c80", 80, 80, 7, 1, 80, 100, 168),
    ("dw3-s2-c64", 64, 64, 3, 2, 64, 200, 336),
    ("dw5-s2-c64", 64, 64, 5, 2, 64, 200, 336),
    ("pw-80-80", 80, 80, 1, 1, 1, 100, 168),
    ("pw-160-320", 160, 320, 1, 1, 1, 50, 84),
    ("fpn3x3-256", 256, 256, 3, 1, 1, 100, 168),
]


def conv(layouts, sizes, only=None):
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for name, cin, cout, k, s, g, h, w in CONVS:
        if only and name not in only:
            continue
        for layout in layouts:
            mf = torch.channels_last if layout == "channels-last" else torch.contiguous_format
            weight = torch.randn(cout, cin // g, k, k, device=dev).to(memory_format=mf).requires_grad_(True)
            for dh in range(sizes):
                # A fresh spatial size each time: a new plan key for cuDNN.
                x = torch.randn(2, cin, h + 8 * dh, w + 8 * dh, device=dev).to(memory_format=mf).requires_grad_(True)
                row = {"probe": "conv", "conv": name, "layout": layout, "input": list(x.shape)}
                for call in ("first", "second"):
                    t, y = timed(lambda: F.conv2d(x, weight, None, s, k // 2, 1, g))
                    row[f"{call}_forward_ms"] = t * 1e3
                    t, _ = timed(lambda: y.sum().backward())
                    row[f"{call}_backward_ms"] = t * 1e3
                emit(**row)


def syncs(d):
    import bench
    import detection as D
    dev = torch.device("cuda")
    counts = []

    def count(f):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                f()
                torch.cuda.synchronize()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(x.message) for x in w)

    for head in ["retinanet", "fpn"]:
        for mode in ["train", "infer"]:
            item = f"det-{mode}-{head}-800"
            space = bench.SMALL
            cfg = json.load(open(f"{d}/det-{head}.json"))
            cfg["fpn_channels"] = 256
            det = D.Detector(cfg, space, 6)
            init = f"{d}/det-{head}-800-init.safetensors"
            if os.path.exists(init):
                D.load(det, init)
            det = det.to(dev)
            x = (torch.rand(2, 3, 800, 1344) * 255).to(dev)
            sizes = [(800, 1344)] * 2
            targets = [(b.to(dev), l.to(dev)) for b, l in D.bench_targets(d, "800")]
            path = [0] * 20

            def step():
                if mode == "train":
                    det.train()
                    det.losses(x, sizes, targets, path).backward()
                else:
                    det.eval()
                    with torch.no_grad():
                        det.detect(x, sizes, path)
            step()  # warm
            emit(probe="syncs", item=item, syncs_per_step=count(step))


def ops():
    from torchvision.ops import batched_nms, nms, roi_align
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(2)

    def boxes(n):
        c = torch.rand(20, 3, generator=g) * torch.tensor([1344.0, 800.0, 200.0]) + torch.tensor([0, 0, 20.0])
        k = torch.arange(n) % 20
        cx, cy, s = c[k, 0], c[k, 1], c[k, 2]
        dx, dy = (torch.rand(n, generator=g) - 0.5) * s * 0.4, (torch.rand(n, generator=g) - 0.5) * s * 0.4
        w, h = s * (0.7 + 0.6 * torch.rand(n, generator=g)), s * (0.7 + 0.6 * torch.rand(n, generator=g))
        b = torch.stack([cx + dx - w / 2, cy + dy - h / 2, cx + dx + w / 2, cy + dy + h / 2], 1)
        return b.to(dev), torch.rand(n, generator=g).to(dev)

    for n in (1500, 3000, 5000):
        per = [boxes(n) for _ in range(2)]
        for label, f in [("per-image", lambda: [nms(b, s, 0.7) for b, s in per]),
                         ("batched", lambda: batched_nms(torch.cat([b for b, _ in per]), torch.cat([s for _, s in per]),
                                                         torch.arange(2, device=dev).repeat_interleave(n), 0.7))]:
            f()
            ts = [timed(f)[0] for _ in range(5)]
            emit(probe="ops", op=f"torchvision-nms-{n}", variant=label, median_ms=sorted(ts)[2] * 1e3)
    feats = [torch.randn(2, 256, 800 // s, 1344 // s, device=dev) for s in (4, 8, 16, 32)]
    for k in (64, 1000):
        b, _ = boxes(2 * k)
        rois = torch.cat([torch.arange(2, device=dev).repeat_interleave(k).float().unsqueeze(1), b], 1)
        area = ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)).sqrt()
        lvl = (torch.log2(area / 224 + 1e-6) + 4).floor().clamp(2, 5).long() - 2

        def pool():
            out = torch.zeros(rois.shape[0], 256, 7, 7, device=dev)
            for l, f in enumerate(feats):
                idx = torch.nonzero(lvl == l).squeeze(1)
                if idx.numel():
                    out[idx] = roi_align(f, rois[idx], (7, 7), 1.0 / 2 ** (l + 2), 2, aligned=False)
            return out
        pool()
        ts = [timed(pool)[0] for _ in range(5)]
        emit(probe="ops", op=f"torchvision-roi-align-{k}", median_ms=sorted(ts)[2] * 1e3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("probe", choices=["versions", "conv", "syncs", "ops"])
    ap.add_argument("--dir")
    ap.add_argument("--layouts", default="nchw,channels-last")
    ap.add_argument("--sizes", type=int, default=2)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.probe == "versions":
        versions()
    elif a.probe == "conv":
        conv(a.layouts.split(","), a.sizes, [x for x in a.only.split(",") if x])
    elif a.probe == "syncs":
        syncs(a.dir)
    else:
        ops()


if __name__ == "__main__":
    main()
