"""Converts a PyTorch checkpoint (`torch.save` file, e.g. SinglePathOneShot's
`Supernet/checkpoint-150000.pth.tar`) into a safetensors file of its state dict, for
`detnas import`. Needs only torch (the project's venv: `source scripts/env.sh`).

Usage: python scripts/pth_to_safetensors.py IN.pth.tar OUT.safetensors
A dict with a `state_dict` entry is unwrapped; every tensor is written as float32 (integer
counters as int64), names unchanged.
"""
import json
import struct
import sys

import torch


def main():
    src, dst = sys.argv[1], sys.argv[2]
    obj = torch.load(src, map_location="cpu", weights_only=False)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj.state_dict()
    header, chunks, offset = {}, [], 0
    for name, t in state.items():
        if not torch.is_tensor(t):
            continue
        t = t.detach().cpu().contiguous()
        t = t.to(torch.int64) if not t.is_floating_point() else t.to(torch.float32)
        data = t.numpy().tobytes()
        header[name] = {"dtype": "I64" if t.dtype == torch.int64 else "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for c in chunks:
            f.write(c)
    print(f"{len(header)} tensors written to {dst}")


if __name__ == "__main__":
    main()
