"""The ImageNet supernet of megvii-model/DetNAS (Supernet-ImageNet/detnasnet.py,
shuffle_blocks.py), restated with the official module names, for testing `detnas import
detnas`. Its blocks are those of the official DetNAS backbone restated in
crates/pipeline/tests/official/check_official.py (imported from there): block i holds its four
choices as `features.i.c`; then `last_conv` (1x1 conv with bias, BN, ReLU), global average
pooling and `fc.fc` (Linear with bias).

Usage: python detnas_supernet.py OUT_DIR ARCH [--classes N] [--seed S] [--fixed]
Writes OUT_DIR/supernet.safetensors (state dict under `module.`, random weights and running
statistics) and OUT_DIR/io64.safetensors (`input` [2, 3, 224, 224] and the eval-mode `logits`
of ARCH, in float64). With --fixed: a searched model of ARCH instead (one op per block,
`features.i.<unit>`, as the DetNAS backbone), with the same head.
"""
import importlib.util
import json
import os
import sys

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "check_official", os.path.join(HERE, "../../crates/pipeline/tests/official/check_official.py"))
official = importlib.util.module_from_spec(spec)
spec.loader.exec_module(official)
spec = importlib.util.spec_from_file_location("spos_supernet", os.path.join(HERE, "spos_supernet.py"))
spos = importlib.util.module_from_spec(spec)
spec.loader.exec_module(spos)


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, k, stride, padding):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, bias=True)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class FC(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.fc = nn.Linear(cin, cout)

    def forward(self, x):
        return self.fc(x)


class Supernet(nn.Module):
    def __init__(self, classes, fixed=None, repeats=(4, 4, 8, 4), widths=(16, 64, 160, 320, 640, 1024)):
        super().__init__()
        self.fixed = fixed is not None
        self.first_conv = ConvBNReLU(3, widths[0], 3, 2, 1)
        blocks, cin, i = [], widths[0], 0
        for s, n in enumerate(repeats, 1):
            cout = widths[s]
            for r in range(n):
                sr, stride = f"{s}{chr(ord('a') + r)}", 2 if r == 0 else 1
                if self.fixed:
                    blocks.append(official.Block(sr, cin, cout, stride, fixed[i]))
                else:
                    blocks.append(nn.ModuleList([official.Block(sr, cin, cout, stride, c) for c in range(4)]))
                cin, i = cout, i + 1
        self.features = nn.Sequential(*blocks)
        self.last_conv = ConvBNReLU(cin, widths[-1], 1, 1, 0)
        self.fc = FC(widths[-1], classes)

    def forward(self, x, arch):
        x = self.first_conv(x)
        for block, c in zip(self.features, arch):
            x = block(x) if self.fixed else block[c](x)
        return self.fc(self.last_conv(x).mean((2, 3)))


def main():
    out, arch = sys.argv[1], [int(c) for c in sys.argv[2]]
    args = sys.argv[3:]
    classes = int(args[args.index("--classes") + 1]) if "--classes" in args else 1000
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 0
    torch.manual_seed(seed)
    net = Supernet(classes, arch if "--fixed" in args else None)
    spos.randomise(net, arch)
    x = torch.randn(2, 3, 224, 224) * 50 + 100
    with torch.no_grad():
        logits = net.double()(x.double(), arch)
        net.float()
    spos.write_safetensors(f"{out}/supernet.safetensors", {"module." + k: v for k, v in net.state_dict().items()})
    spos.write_safetensors(f"{out}/io64.safetensors", {"input": x.double(), "logits": logits})
    print(json.dumps({"keys": len(net.state_dict()), "logits_abs_max": logits.abs().max().item()}))


if __name__ == "__main__":
    main()
