"""Loads an exported backbone into the official DetNAS backbone definition and compares its
outputs with detnas's.

The network below restates `ShuffleNetV2DetNAS` of megvii-model/DetNAS
(`maskrcnn_benchmark/modeling/backbone/detnasnet.py`, `shuffle_blocks.py`) for a fixed
architecture, with the official module names (so its state dict has the official keys):
`first_conv.{conv,bn}`, `features.i.conv.u.<unit modules>`, `features.i.proj_conv.<unit>`,
units named `interstellar<name>[_s, _s_bn]` / `bn<name>`; channel shuffle method 1;
SyncBN replaced by BatchNorm2d (identical in eval mode).

Usage: python check_official.py EXPORT_DIR IO.safetensors
IO.safetensors holds `input` and detnas's outputs `c2`..`c5`. Loads backbone.safetensors
with strict=True; exits 1 when an output differs by more than 1e-4 (relative to its scale).
"""
import json
import struct
import sys

import torch
import torch.nn as nn

OPS = ["shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3"]
KSIZE = [3, 5, 7, 3]
DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        t = torch.frombuffer(bytearray(body[a:b]), dtype=DTYPES[v["dtype"]])
        out[k] = t.reshape(v["shape"]).clone()
    return out


def unit(name, cin, cout, k, stride, spatial, relu):
    """create_spatial_conv2d_group_bn_relu of the official code, with its module names."""
    m = nn.Sequential()
    conv = "interstellar" + name
    if spatial:
        m.add_module(conv + "_s", nn.Conv2d(cin, cin, k, stride, k // 2, groups=cin, bias=False))
        m.add_module(conv + "_s_bn", nn.BatchNorm2d(cin))
    m.add_module(conv, nn.Conv2d(cin, cout, 1, 1, 0, bias=False))
    m.add_module("bn" + name, nn.BatchNorm2d(cout))
    if relu:
        m.add_module("relu" + name, nn.ReLU())
    return m


def shuffle1(x):
    b, c, h, w = x.shape
    x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
    return x[:, : c // 2], x[:, c // 2:]


class Block(nn.Module):
    """ShuffleNetV2BlockSearched with one op."""

    def __init__(self, sr, cin, cout, stride, choice):
        super().__init__()
        self.stride = stride
        mid = cout // 2
        bin_, bout = (cin, cout - cin) if stride == 2 else (cin // 2, cout // 2)
        q = sr + "_" + OPS[choice]
        if choice < 3:
            k = KSIZE[choice]
            self.conv = nn.Sequential(unit(q + "_branch2a", bin_, mid, 1, 1, False, True),
                                      unit(q + "_branch2b", mid, bout, k, stride, True, False))
        else:
            self.conv = nn.Sequential(unit(q + "_branch2a", bin_, mid, 3, stride, True, True),
                                      unit(q + "_branch2b", mid, mid, 3, 1, True, True),
                                      unit(q + "_branch2c", mid, bout, 3, 1, True, False))
        if stride == 2:
            self.proj_conv = unit(sr + "_proj", cin, cin, KSIZE[choice], 2, True, True)

    def forward(self, x):
        if self.stride == 1:
            proj, x = shuffle1(x)
        else:
            proj = self.proj_conv(x)
        return torch.cat((proj, torch.relu(self.conv(x))), 1)


class FirstConv(nn.Module):
    def __init__(self, cout):
        super().__init__()
        self.conv = nn.Conv2d(3, cout, 3, 2, 1, bias=True)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class ShuffleNetV2DetNAS(nn.Module):
    def __init__(self, architecture, stage_repeats, stage_out_channels):
        super().__init__()
        self.first_conv = FirstConv(stage_out_channels[1])
        blocks, self.ends, cin, i = [], [], stage_out_channels[1], 0
        for s, repeats in enumerate(stage_repeats, 1):
            cout = stage_out_channels[s + 1]
            for r in range(repeats):
                blocks.append(Block(f"{s}{chr(ord('a') + r)}", cin, cout, 2 if r == 0 else 1, architecture[i]))
                cin, i = cout, i + 1
            self.ends.append(i - 1)
        self.features = nn.Sequential(*blocks)

    def forward(self, x):
        outs = []
        x = self.first_conv(x)
        for i, b in enumerate(self.features):
            x = b(x)
            if i in self.ends:
                outs.append(x)
        return outs


def main():
    export, io_path = sys.argv[1], sys.argv[2]
    info = json.load(open(f"{export}/arch.json"))
    model = ShuffleNetV2DetNAS(info["choices"], info["stage_repeats"], [-1] + info["stage_out_channels"])
    model.load_state_dict(read_safetensors(f"{export}/backbone.safetensors"), strict=True)
    model.eval()
    io = read_safetensors(io_path)
    with torch.no_grad():
        outs = model(io["input"])
    worst = 0.0
    for name, o in zip(["c2", "c3", "c4", "c5"], outs):
        ref = io[name]
        assert o.shape == ref.shape, (name, o.shape, ref.shape)
        d = ((o - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()
        worst = max(worst, d)
    print(json.dumps({"max_relative_difference": worst, "keys": len(model.state_dict())}))
    sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
