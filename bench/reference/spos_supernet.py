"""The SinglePathOneShot supernet of megvii-model/SinglePathOneShot (src/Supernet/network.py,
blocks.py), restated with the official module names so that its state dict has the official
keys, for testing `detnas import spos`.

Structure as the official code: `first_conv` (3x3 s2 conv without bias, non-affine BN, ReLU);
`features[i][c]` for 20 blocks x 4 choices (Shufflenet 3/5/7, Shuffle_Xception), each with
`branch_main` (and `branch_proj` at stride 2) as nn.Sequential in the official order, every BN
non-affine; SPOS's channel shuffle (even channels pass through); `conv_last` (1x1 conv without
bias, BN, ReLU); global average pooling; `classifier.0` (Linear without bias).

Usage: python spos_supernet.py OUT_DIR ARCH [--classes N] [--seed S]
Writes OUT_DIR/supernet.safetensors (the state dict under the DataParallel prefix `module.`,
with random weights and running statistics) and OUT_DIR/io.safetensors (`input` [2, 3, 224,
224] and the eval-mode `logits` of ARCH, e.g. 01230123012301230123), and io64.safetensors, the
same in float64 (where the comparison is free of float32 summation order).
"""
import json
import struct
import sys

import torch
import torch.nn as nn


def bn(c):
    return nn.BatchNorm2d(c, affine=False)


def dw(c, k, stride):
    return nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)


def pw(cin, cout):
    return nn.Conv2d(cin, cout, 1, 1, 0, bias=False)


class Choice(nn.Module):
    def __init__(self, inp, oup, mid, k, stride, xception):
        super().__init__()
        self.stride = stride
        out = oup - inp
        if xception:
            main = [dw(inp, 3, stride), bn(inp), pw(inp, mid), bn(mid), nn.ReLU(),
                    dw(mid, 3, 1), bn(mid), pw(mid, mid), bn(mid), nn.ReLU(),
                    dw(mid, 3, 1), bn(mid), pw(mid, out), bn(out), nn.ReLU()]
        else:
            main = [pw(inp, mid), bn(mid), nn.ReLU(), dw(mid, k, stride), bn(mid), pw(mid, out), bn(out), nn.ReLU()]
        self.branch_main = nn.Sequential(*main)
        if stride == 2:
            kp = 3 if xception else k
            self.branch_proj = nn.Sequential(dw(inp, kp, 2), bn(inp), pw(inp, inp), bn(inp), nn.ReLU())

    def forward(self, x):
        if self.stride == 1:
            b, c, h, w = x.shape
            x = x.reshape(b * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
            return torch.cat((x[0], self.branch_main(x[1])), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)


class Supernet(nn.Module):
    def __init__(self, classes):
        super().__init__()
        repeats, widths = [4, 4, 8, 4], [16, 64, 160, 320, 640, 1024]
        self.first_conv = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), bn(16), nn.ReLU())
        self.features = nn.ModuleList()
        cin = widths[0]
        for s, n in enumerate(repeats):
            cout = widths[s + 1]
            for i in range(n):
                inp, stride = (cin, 2) if i == 0 else (cin // 2, 1)
                self.features.append(nn.ModuleList(
                    [Choice(inp, cout, cout // 2, k, stride, k == 0) for k in [3, 5, 7, 0]]))
                cin = cout
        self.conv_last = nn.Sequential(pw(cin, widths[-1]), bn(widths[-1]), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(widths[-1], classes, bias=False))

    def forward(self, x, arch):
        x = self.first_conv(x)
        for block, c in zip(self.features, arch):
            x = block[c](x)
        x = self.conv_last(x).mean((2, 3))
        return self.classifier(x)


def randomise(net, arch):
    """Random weights (and biases, BN affine parameters where the network has them), then the
    running statistics of `arch`'s BNs measured on random images (a cumulative average), so
    its activations keep their scale; the other choices keep random statistics. Leaves `net`
    in eval mode."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 1.0 / m.weight.shape[1] ** 0.5)
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
                m.momentum = None
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.01)
                if m.bias is not None:
                    m.bias.normal_(0, 0.01)
        net.train()
        for _ in range(2):
            net(torch.randn(4, 3, 224, 224) * 50 + 100, arch)
    net.eval()


DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}


def write_safetensors(path, tensors):
    header, body, offset = {}, b"", 0
    for name, t in tensors.items():
        data = t.detach().contiguous().numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        body += data
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + body)


def main():
    out, arch = sys.argv[1], [int(c) for c in sys.argv[2]]
    args = sys.argv[3:]
    classes = int(args[args.index("--classes") + 1]) if "--classes" in args else 1000
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 0
    torch.manual_seed(seed)
    net = Supernet(classes)
    randomise(net, arch)
    x = torch.randn(2, 3, 224, 224) * 50 + 100
    with torch.no_grad():
        logits = net(x, arch)
        logits64 = net.double()(x.double(), arch)
        net.float()
    write_safetensors(f"{out}/supernet.safetensors", {"module." + k: v for k, v in net.state_dict().items()})
    write_safetensors(f"{out}/io.safetensors", {"input": x, "logits": logits})
    write_safetensors(f"{out}/io64.safetensors", {"input": x.double(), "logits": logits64})
    print(json.dumps({"keys": len(net.state_dict()), "logits_abs_mean": logits.abs().mean().item()}))


if __name__ == "__main__":
    main()
