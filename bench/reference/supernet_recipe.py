"""PyTorch restatement of the demo's supernet pre-training, for the recipe study in the
README ("One-shot training at CPU scale"): is the plateau of path-wise training a property of
the recipe (it is: PyTorch reproduces it), and what gets past it.

The blocks are the official DetNAS definition as restated in
crates/nn/tests/fixtures/golden/make_golden.py; initialisation is the official one; the
update is detnas's path-wise SGD (only the sampled path's weights and momentum move). No
augmentation; evaluation as detnas: BN statistics recomputed on 500 training images per
path, top-1 on the 1000 held-out images, mean over 8 random paths.

Data: the built-in synthetic shapes written by detnas (needs Pillow to read them):
    detnas data synth-cls --out /tmp/pt/cls_train --images 20000 --seed 1
    detnas data synth-cls --out /tmp/pt/cls_val --images 1000 --seed 2
Runs (one thread each, about 2 minutes for 1200 steps), with what they gave here:
    python supernet_recipe.py cold          # random init: training top-1 0.21 at step 1000 (loss 2.05)
    python supernet_recipe.py mom0 --momentum 0                         # 0.414
    python supernet_recipe.py align --momentum 0 --align                # 0.529
    python supernet_recipe.py warm --warm 600 --xid                     # warm start: 0.755
    python supernet_recipe.py warm1800 --warm 900 --steps 1800 --xid    # 0.796
    python supernet_recipe.py fixed --fixed 23013                       # one path: 0.840
"""
import argparse, json, os, sys, time, random
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "crates", "nn", "tests", "fixtures", "golden"))
from make_golden import Op, conv_bn

ap = argparse.ArgumentParser()
ap.add_argument("name")
ap.add_argument("--choices", default="0123", help="allowed choices; keep 0, the alignment reference")
ap.add_argument("--steps", type=int, default=1200)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--lr", type=float, default=0.1)
ap.add_argument("--opt", default="pathsgd")
ap.add_argument("--fixed", default=None)
ap.add_argument("--fair", action="store_true")
ap.add_argument("--init", default="official", help="official, or anything else for PyTorch defaults")
ap.add_argument("--widths", default="32,64,128,256")
ap.add_argument("--depths", default="1,1,2,1")
ap.add_argument("--last", type=int, default=256)
ap.add_argument("--stem", type=int, default=16)
ap.add_argument("--dropout", type=float, default=0.2)
ap.add_argument("--ls", type=float, default=0.1)
ap.add_argument("--momentum", type=float, default=0.9)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--paths", type=int, default=8)
ap.add_argument("--data", default="/tmp/pt", help="folder holding cls_train/ and cls_val/")
ap.add_argument("--align", action="store_true", help="align every choice to the 3x3 one at initialisation")
ap.add_argument("--xid", action="store_true", help="Xception aligned with identity depthwise stages (as detnas)")
ap.add_argument("--warm", type=int, default=0, help="steps on the all-3x3 path, then align and sample")
ap.add_argument("--warm_mom", type=float, default=None, help="momentum during the warm start (default: --momentum)")
a = ap.parse_args()
torch.set_num_threads(1)
torch.manual_seed(a.seed); random.seed(a.seed)

def load(d, n):
    cache = d + ".npz"
    if os.path.exists(cache):
        z = np.load(cache); return z["x"], z["y"]
    from PIL import Image
    classes = sorted(os.listdir(d))
    xs, ys = [], []
    for ci, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(d, c))):
            xs.append(np.asarray(Image.open(os.path.join(d, c, f)).convert("RGB"))); ys.append(ci)
    x = np.stack(xs).transpose(0, 3, 1, 2); y = np.array(ys)
    np.savez(cache, x=x, y=y); return x, y

xtr, ytr = load(os.path.join(a.data, "cls_train"), 20000)
xva, yva = load(os.path.join(a.data, "cls_val"), 1000)
def prep(x): return (torch.from_numpy(x).float() / 255.0 - 0.45) / 0.25
Xtr, Ytr = prep(xtr), torch.from_numpy(ytr)
Xva, Yva = prep(xva), torch.from_numpy(yva)
CH = [int(c) for c in a.choices]
widths = [int(w) for w in a.widths.split(",")]; depths = [int(d) for d in a.depths.split(",")]

class Net(nn.Module):
    def __init__(s):
        super().__init__()
        s.first = conv_bn(3, a.stem, 3, 2, False, bias=True, relu=True)
        blocks, cin = [], a.stem
        for w, d in zip(widths, depths):
            for j in range(d):
                blocks.append(nn.ModuleDict({str(c): Op(cin, w, 2 if j == 0 else 1, c) for c in CH})); cin = w
        s.features = nn.ModuleList(blocks)
        s.last = conv_bn(cin, a.last, 1, 1, False, bias=True, relu=True)
        s.fc = nn.Linear(a.last, 10)
    def forward(s, x, path):
        x = s.first(x)
        for i, c in enumerate(path):
            x = s.features[i][str(c)](x)
        y = F.dropout2d(s.last(x), a.dropout, s.training)
        return s.fc(y.mean(dim=(2, 3)))

net = Net()
if a.init == "official":
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0, 0.01 if name.startswith("first") else 1.0 / m.weight.shape[1])
            if m.bias is not None: nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight); nn.init.constant_(m.bias, 1e-4)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01); nn.init.zeros_(m.bias)
nblocks = len(net.features)
def copy_centred(src, dst):
    fk, tk = src.shape[2], dst.shape[2]
    if fk == tk: dst.copy_(src)
    elif fk > tk:
        c = (fk - tk) // 2; dst.copy_(src[:, :, c:c + tk, c:c + tk])
    else:
        pad = (tk - fk) // 2; dst.zero_(); dst[:, :, pad:pad + fk, pad:pad + fk].copy_(src)
def copy_unit(src, dst):
    copy_centred(src.conv.weight, dst.conv.weight)
    dst.bn.load_state_dict(src.bn.state_dict())
def align():
    with torch.no_grad():
        for ops in net.features:
            r = ops["0"]
            for c, op in ops.items():
                if c == "0": continue
                if c == "3" and a.xid:
                    # dw3(s)=subsample identity, pw1=ref pw1, dw2=ref dw (cropped/centred), pw2=identity, dw3=identity, pw3=ref pw2
                    for u in (op.branch[0], op.branch[4]):
                        w = u.conv.weight; w.zero_(); w[:, :, 1, 1] = 1.0
                    w = op.branch[3].conv.weight; w.zero_(); w[:, :, 0, 0].copy_(torch.eye(w.shape[0]))
                    pairs = [(r.branch[0], op.branch[1]), (r.branch[1], op.branch[2]), (r.branch[2], op.branch[5])]
                elif c == "3":
                    pairs = [(r.branch[0], op.branch[1]), (r.branch[2], op.branch[5])]
                else:
                    pairs = list(zip(r.branch, op.branch))
                if hasattr(r, "proj"): pairs += list(zip(r.proj, op.proj))
                for s_, d_ in pairs: copy_unit(s_, d_)
if a.align: align()
def sample():
    if a.fixed: return [int(c) for c in a.fixed]
    return [random.choice(CH) for _ in range(nblocks)]
def fair_group():
    perms = [random.sample(CH, len(CH)) for _ in range(nblocks)]
    return [[perms[b][k] for b in range(nblocks)] for k in range(len(CH))]

bufs = {}
def pathsgd(lr, wd=4e-5):
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.grad is None: continue
            d = p.grad + wd * p if (name.endswith(".weight") and p.dim() >= 2) else p.grad.clone()
            if a.momentum:
                if name in bufs: bufs[name].mul_(a.momentum).add_(d); d = bufs[name]
                else: bufs[name] = d.clone()
            p.sub_(lr * d); p.grad = None
torchopt = None
if a.opt == "torchsgd":  # SPOS official: zero grads stay zeros, momentum/wd move unsampled choices
    torchopt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=a.momentum, weight_decay=4e-5)
elif a.opt == "adam":
    torchopt = torch.optim.Adam(net.parameters(), lr=a.lr)

a_mom_base = a.momentum
t0 = time.time(); g = torch.Generator().manual_seed(a.seed)
net.train(); run = []
for step in range(a.steps):
    lr = a.lr * (1 - step / a.steps)
    idx = torch.randint(0, len(Xtr), (a.batch,), generator=g)
    x, y = Xtr[idx], Ytr[idx]
    if a.warm and step == a.warm:
        align(); bufs.clear()
    group = [[0] * nblocks] if step < a.warm else (fair_group() if a.fair else [sample()])
    if a.warm_mom is not None: a.momentum = a.warm_mom if step < a.warm else a_mom_base
    for path in group:
        out = net(x, path)
        loss = F.cross_entropy(out, y, label_smoothing=a.ls)
        loss.backward()
        run.append((loss.item(), (out.argmax(1) == y).float().mean().item()))
    if torchopt is not None:
        for pg in torchopt.param_groups: pg["lr"] = lr
        torchopt.step()
        if a.opt == "torchsgd":
            torchopt.zero_grad(set_to_none=False)
        else:
            torchopt.zero_grad()
    else:
        pathsgd(lr)
    if (step + 1) % 200 == 0:
        l = np.mean([r[0] for r in run[-200:]]); t = np.mean([r[1] for r in run[-200:]])
        print(f"step {step+1} loss {l:.3f} train_top1 {t:.3f} {time.time()-t0:.0f}s", flush=True)

def evaluate(path):
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d): m.reset_running_stats(); m.momentum = None
    net.train()
    with torch.no_grad():
        perm = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(7))[:500]
        for i in range(0, 500, 100): net(Xtr[perm[i:i + 100]], path)
        net.eval(); c = 0
        for i in range(0, 1000, 200): c += (net(Xva[i:i + 200], path).argmax(1) == Yva[i:i + 200]).sum().item()
    return c / 1000
rng = random.Random(123)
paths = [[rng.choice(CH) for _ in range(nblocks)] for _ in range(a.paths)] if not a.fixed else [sample()]
tops = [evaluate(p) for p in paths]
print(json.dumps({"name": a.name, "top1_mean": round(float(np.mean(tops)), 3), "min": min(tops), "max": max(tops), "s": round(time.time() - t0)}), flush=True)
