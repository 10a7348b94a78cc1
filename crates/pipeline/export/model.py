"""A DetNAS detector exported by detnas: a ShuffleNetV2 child backbone (DetNAS, Chen et al.,
NeurIPS 2019, arXiv:1903.10979; blocks of megvii-model/DetNAS `shuffle_blocks.py`), an FPN
(Lin et al., arXiv:1612.03144) and a RetinaNet (arXiv:1708.02002) or Faster R-CNN
(arXiv:1506.01497) head, with detnas's pre- and post-processing. Imports only torch.

    import model
    det = model.load("EXPORT")                  # arch.json + detector.safetensors, strict
    out = det.predict([image, ...])             # uint8 [H, W, 3] RGB tensors (or PIL images)
    # out[i] = (boxes [K, 4] x1 y1 x2 y2 in the image's pixels, scores [K], labels [K]);
    # label l is det.classes[l] ({"id", "name"}).

    python model.py check EXPORT                # this file's outputs against detnas's own
                                                # (EXPORT/reference.safetensors), every level
    python model.py bench EXPORT [REPS [H W]]   # latency on the first reference image (CPU),
                                                # resized to H x W when given

Shapes follow detnas (`crates/detect`): images `[N, 3, H, W]` padded to `divisibility`, the
pyramid `p3`..`p7` (RetinaNet) or `p2`..`p6` (Faster R-CNN), head outputs per level
`[N, H·W·A, K]` / `[N, H·W·A, 4]`.
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

BBOX_CLIP = math.log(1000.0 / 16)
KERNEL = {0: 3, 1: 5, 2: 7, 3: 3}
DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "U8": torch.uint8, "I32": torch.int32,
          "BF16": torch.bfloat16, "F16": torch.float16, "BOOL": torch.bool}


def read_safetensors(path):
    """{name: tensor} of a safetensors file (the format's JSON header, then raw little-endian data)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=DTYPES[v["dtype"]]) if b > a else torch.zeros(0, dtype=DTYPES[v["dtype"]])
        out[k] = t.reshape(v["shape"])
    return out


# ---------------------------------------------------------------- backbone

def conv_bn(cin, cout, k, stride, depthwise, bias=False, relu=False):
    """Sequential(conv, bn[, relu]), keys conv.*, bn.*"""
    m = nn.Sequential()
    m.add_module("conv", nn.Conv2d(cin, cout, k, stride, k // 2, groups=cin if depthwise else 1, bias=bias))
    m.add_module("bn", nn.BatchNorm2d(cout))
    if relu:
        m.add_module("relu", nn.ReLU())
    return m


class Block(nn.Module):
    """One ShuffleNetV2 block with choice 0-2 (1x1, k x k depthwise, 1x1; k = 3, 5, 7) or 3
    (Xception: three depthwise 3x3 + 1x1); stride 2 blocks project the whole input."""

    def __init__(self, cin, out, stride, choice, shuffle):
        super().__init__()
        self.stride, self.shuffle = stride, shuffle
        mid = out // 2
        bin_, bout = (cin // 2, out // 2) if stride == 1 else (cin, out - cin)
        k = KERNEL[choice]
        if choice < 3:
            units = [conv_bn(bin_, mid, 1, 1, False, relu=True), conv_bn(mid, mid, k, stride, True),
                     conv_bn(mid, bout, 1, 1, False)]
        else:
            units = [conv_bn(bin_, bin_, 3, stride, True), conv_bn(bin_, mid, 1, 1, False, relu=True),
                     conv_bn(mid, mid, 3, 1, True), conv_bn(mid, mid, 1, 1, False, relu=True),
                     conv_bn(mid, mid, 3, 1, True), conv_bn(mid, bout, 1, 1, False)]
        self.branch = nn.Sequential(*units)
        if stride == 2:
            self.proj = nn.Sequential(conv_bn(cin, cin, k, 2, True), conv_bn(cin, cin, 1, 1, False, relu=True))

    def forward(self, x):
        if self.stride == 2:
            x_proj = self.proj(x)
        elif self.shuffle == "even-odd":
            # megvii-model/SinglePathOneShot `blocks.py` channel_shuffle
            x_proj, x = x[:, 0::2], x[:, 1::2]
        else:
            # megvii-model/DetNAS `shuffle_blocks.py` channel_shuffle1
            b, c, h, w = x.shape
            x = x.reshape(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
            x_proj, x = x[:, : c // 2], x[:, c // 2:]
        return torch.cat((x_proj, F.relu(self.branch(x))), 1)


class Backbone(nn.Module):
    """The child network: stem, blocks; returns each stage's output C2..C5."""

    def __init__(self, space, choices):
        super().__init__()
        self.stem = conv_bn(3, space["stem"], 3, 2, False, bias=True, relu=True)
        blocks, cin, self.ends = [], space["stem"], []
        shuffle = space.get("shuffle", "detnas")
        for w, d in zip(space["widths"], space["depths"]):
            for j in range(d):
                blocks.append(Block(cin, w, 2 if j == 0 else 1, choices[len(blocks)], shuffle))
                cin = w
            self.ends.append(len(blocks) - 1)
        self.features = nn.ModuleList(blocks)

    def forward(self, x):
        x, out = self.stem(x), []
        for i, b in enumerate(self.features):
            x = b(x)
            if i in self.ends:
                out.append(x)
        return out


# ---------------------------------------------------------------- FPN

class ConvUnit(nn.Module):
    """conv (bias iff no BN) [+ BN] [+ ReLU]; keys conv.*, bn.*"""

    def __init__(self, cin, cout, k, stride=1, bn=True, relu=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=not bn)
        if bn:
            self.bn = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x):
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class Fpn(nn.Module):
    """Lateral 1x1 and output 3x3 convs, nearest top-down upsampling; then P6/P7 from C5
    (RetinaNet) or P6 as a stride-2 subsample of the top output (Faster R-CNN)."""

    def __init__(self, in_channels, out, bn, top):
        super().__init__()
        for i, c in enumerate(in_channels):
            self.add_module(f"inner{i}", ConvUnit(c, out, 1, 1, bn))
            self.add_module(f"layer{i}", ConvUnit(out, out, 3, 1, bn))
        self.n, self.top = len(in_channels), top
        if top == "p6p7":
            self.p6 = ConvUnit(in_channels[-1], out, 3, 2, bn)
            self.p7 = ConvUnit(out, out, 3, 2, bn)

    def forward(self, feats):
        n = self.n
        last = getattr(self, f"inner{n - 1}")(feats[-1])
        outs = [getattr(self, f"layer{n - 1}")(last)]
        for i in range(n - 2, -1, -1):
            lat = getattr(self, f"inner{i}")(feats[i])
            last = lat + F.interpolate(last, size=lat.shape[-2:], mode="nearest")
            outs.insert(0, getattr(self, f"layer{i}")(last))
        if self.top == "maxpool":
            outs.append(F.max_pool2d(outs[-1], 1, 2, 0))
        else:
            p6 = self.p6(feats[-1])
            outs += [p6, self.p7(F.relu(p6))]
        return outs


def flatten_level(t, c):
    """[N, A*C, H, W] -> [N, H*W*A, C]"""
    n, _, h, w = t.shape
    return t.reshape(n, -1, c, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, c)


# ---------------------------------------------------------------- boxes

def anchor_grid(sizes_per_level, ratios, strides, shapes, device):
    """Per level [H*W*A, 4] anchors (x1, y1, x2, y2), centred on the cells' top-left corners."""
    out = []
    for sizes, s, (h, w) in zip(sizes_per_level, strides, shapes):
        base = []
        for r in ratios:
            hr = math.sqrt(r)
            for z in sizes:
                bw, bh = z / hr, z * hr
                base.append([-bw / 2, -bh / 2, bw / 2, bh / 2])
        base = torch.tensor(base, dtype=torch.float32, device=device)
        ys = torch.arange(h, dtype=torch.float32, device=device) * s
        xs = torch.arange(w, dtype=torch.float32, device=device) * s
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        x, y = x.reshape(-1), y.reshape(-1)
        shifts = torch.stack([x, y, x, y], 1)
        out.append((shifts[:, None] + base[None]).reshape(-1, 4))
    return out


def decode(deltas, ref, weights=(1.0, 1.0, 1.0, 1.0)):
    """Box coder of Faster R-CNN: deltas [R, 4k] on references [R, 4] -> boxes [R, 4k]."""
    wx, wy, ww, wh = weights
    w = ref[:, 2] - ref[:, 0]
    h = ref[:, 3] - ref[:, 1]
    cx = ref[:, 0] + 0.5 * w
    cy = ref[:, 1] + 0.5 * h
    r, k4 = deltas.shape
    d = deltas.reshape(r, k4 // 4, 4)
    dx, dy = d[..., 0] / wx, d[..., 1] / wy
    dw = (d[..., 2] / ww).clamp(max=BBOX_CLIP)
    dh = (d[..., 3] / wh).clamp(max=BBOX_CLIP)
    pcx, pcy = dx * w[:, None] + cx[:, None], dy * h[:, None] + cy[:, None]
    pw, ph = dw.exp() * w[:, None], dh.exp() * h[:, None]
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], 2).reshape(r, k4)


def clip(b, h, w):
    return torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], 1)


def nonempty(b, min_size=1e-3, strict=True):
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return (w > min_size) & (h > min_size) if strict else (w >= min_size) & (h >= min_size)


def nms(boxes, scores, labels, threshold, limit=None):
    """Greedy NMS, torchvision's rule (a box is dropped when its IoU with a kept box of the same
    label exceeds threshold): boxes visited by descending score, ties lower index first. Returns
    the kept indices in that order, at most `limit` (the first kept boxes do not depend on the
    later ones, so the search stops there)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    b, lab = boxes[order], labels[order]
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    dropped = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(order)):
        if dropped[i]:
            continue
        keep.append(i)
        if len(keep) == limit:
            break
        r = b[i + 1:]
        iw = (torch.minimum(r[:, 2], b[i, 2]) - torch.maximum(r[:, 0], b[i, 0])).clamp(min=0)
        ih = (torch.minimum(r[:, 3], b[i, 3]) - torch.maximum(r[:, 1], b[i, 1])).clamp(min=0)
        inter = iw * ih
        union = area[i] + area[i + 1:] - inter
        iou = torch.where(union > 0, inter / union, torch.zeros_like(inter))
        dropped[i + 1:] |= (iou > threshold) & (lab[i + 1:] == lab[i])
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def roi_align(feat, rois, out, scale, sr):
    """RoIAlign with aligned=False (maskrcnn_benchmark's ROIAlign): rois [K, 5] (batch index,
    x1, y1, x2, y2) on feat [N, C, H, W] -> [K, C, out, out]; sr x sr bilinear samples per
    bin; samples beyond one pixel outside the map contribute 0."""
    n, c, h, w = feat.shape
    if rois.shape[0] == 0:
        return feat.new_zeros(0, c, out, out)
    table = feat.permute(0, 2, 3, 1).reshape(n * h * w, c)
    b = rois[:, 0].long()
    x1, y1, x2, y2 = (rois[:, 1:] * scale).unbind(1)
    bw = (x2 - x1).clamp(min=1.0) / out
    bh = (y2 - y1).clamp(min=1.0) / out
    steps = (torch.arange(out * sr, dtype=torch.float32, device=feat.device) + 0.5) / sr
    ys = y1[:, None] + steps[None] * bh[:, None]
    xs = x1[:, None] + steps[None] * bw[:, None]

    def axis(v, size):
        ok = (v >= -1.0) & (v <= size)
        v = v.clamp(min=0.0)
        low = v.floor().long()
        top = low >= size - 1
        low = torch.where(top, torch.full_like(low, size - 1), low)
        high = torch.where(top, low, low + 1)
        v = torch.where(top, low.float(), v)
        frac = v - low.float()
        return ok, low, high, frac

    oky, yl, yh, ly = axis(ys, h)
    okx, xl, xh, lx = axis(xs, w)
    base = (b * h * w)[:, None, None]
    at = lambda yy, xx: table[base + yy[:, :, None] * w + xx[:, None, :]]
    hy, hx = (1 - ly)[:, :, None, None], (1 - lx)[:, None, :, None]
    lyy, lxx = ly[:, :, None, None], lx[:, None, :, None]
    v = hy * hx * at(yl, xl) + hy * lxx * at(yl, xh) + lyy * hx * at(yh, xl) + lyy * lxx * at(yh, xh)
    v = v * (oky[:, :, None] & okx[:, None, :])[..., None]
    k = rois.shape[0]
    return v.reshape(k, out, sr, out, sr, c).mean((2, 4)).permute(0, 3, 1, 2)


# ---------------------------------------------------------------- heads

class RetinaHead(nn.Module):
    def __init__(self, cfg, ch, classes):
        super().__init__()
        self.cfg, self.k = cfg, classes
        a = cfg["scales_per_octave"] * len(cfg["aspect_ratios"])
        levels = len(cfg["anchor_sizes"])

        def tower():
            t = nn.ModuleList()
            for _ in range(cfg["num_convs"]):
                u = nn.Module()
                if cfg["tower_bn"] and cfg["level_bn"]:
                    u.conv = nn.Conv2d(ch, ch, 3, 1, 1, bias=True)
                    for l in range(levels):
                        u.add_module(f"bn_p{l + 3}", nn.BatchNorm2d(ch))
                else:
                    u.conv = nn.Conv2d(ch, ch, 3, 1, 1, bias=not cfg["tower_bn"])
                    if cfg["tower_bn"]:
                        u.bn = nn.BatchNorm2d(ch)
                t.append(u)
            return t

        self.cls_tower, self.bbox_tower = tower(), tower()
        self.cls_logits = nn.Conv2d(ch, a * classes, 3, 1, 1)
        self.bbox_pred = nn.Conv2d(ch, a * 4, 3, 1, 1)
        spo = cfg["scales_per_octave"]
        self.sizes = [[b * 2 ** (i / spo) for i in range(spo)] for b in cfg["anchor_sizes"]]
        self.strides = [2 ** (l + 3) for l in range(levels)]

    @staticmethod
    def _unit(u, x, l):
        x = u.conv(x)
        if hasattr(u, "bn"):
            x = u.bn(x)
        elif hasattr(u, f"bn_p{l + 3}"):
            x = getattr(u, f"bn_p{l + 3}")(x)
        return F.relu(x)

    def forward(self, feats):
        """Raw outputs: per level class logits [N, H*W*A, K] and box deltas [N, H*W*A, 4]."""
        cls, reg = [], []
        for l, f in enumerate(feats):
            c, b = f, f
            for u in self.cls_tower:
                c = self._unit(u, c, l)
            for u in self.bbox_tower:
                b = self._unit(u, b, l)
            cls.append(flatten_level(self.cls_logits(c), self.k))
            reg.append(flatten_level(self.bbox_pred(b), 4))
        return cls, reg

    def detect(self, feats, sizes):
        cfg = self.cfg
        cls, reg = self(feats)
        anchors = anchor_grid(self.sizes, cfg["aspect_ratios"], self.strides, [f.shape[-2:] for f in feats],
                              feats[0].device)
        out = []
        for i, (h, w) in enumerate(sizes):
            boxes, scores, labels = [], [], []
            for l, a in enumerate(anchors):
                s = cls[l][i].sigmoid().reshape(-1)
                top, flat = s.topk(min(s.numel(), cfg["pre_nms_top_n"]))
                keep = top > cfg["score_threshold"]
                top, flat = top[keep], flat[keep]
                ai, lab = flat // self.k, flat % self.k
                b = clip(decode(reg[l][i][ai], a[ai]), h, w)
                ok = nonempty(b)
                boxes.append(b[ok])
                scores.append(top[ok])
                labels.append(lab[ok])
            b, s, lab = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = nms(b, s, lab, cfg["nms_threshold"], cfg["detections_per_image"])
            out.append((b[keep], s[keep], lab[keep]))
        return out


class Rpn(nn.Module):
    def __init__(self, cfg, ch):
        super().__init__()
        self.cfg = cfg
        a = len(cfg["aspect_ratios"])
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)
        self.cls_logits = nn.Conv2d(ch, a, 1)
        self.bbox_pred = nn.Conv2d(ch, 4 * a, 1)
        self.sizes = [[s] for s in cfg["anchor_sizes"]]
        self.strides = [2 ** (l + 2) for l in range(len(cfg["anchor_sizes"]))]

    def forward(self, feats):
        """Raw outputs: per level objectness [N, H*W*A] and deltas [N, H*W*A, 4]."""
        obj, reg = [], []
        for f in feats:
            t = F.relu(self.conv(f))
            obj.append(flatten_level(self.cls_logits(t), 1).squeeze(2))
            reg.append(flatten_level(self.bbox_pred(t), 4))
        return obj, reg

    def proposals(self, feats, sizes):
        """Test-time proposals per image [P, 4], by descending objectness: per level the top
        pre_nms_top_n_test, decoded, clipped, at least min_size, NMS within the level; then the
        best post_nms_top_n_test over the levels."""
        cfg = self.cfg
        obj, reg = self(feats)
        anchors = anchor_grid(self.sizes, cfg["aspect_ratios"], self.strides, [f.shape[-2:] for f in feats],
                              feats[0].device)
        props = []
        for i, (h, w) in enumerate(sizes):
            boxes, scores, levels = [], [], []
            for l in range(len(feats)):
                o = obj[l][i]
                s, idx = o.topk(min(o.numel(), cfg["pre_nms_top_n_test"]))
                b = clip(decode(reg[l][i][idx], anchors[l][idx]), h, w)
                keep = nonempty(b, max(cfg["min_size"], 1e-3), strict=False)
                boxes.append(b[keep])
                scores.append(s[keep])
                levels.append(torch.full((int(keep.sum()),), l, dtype=torch.int64, device=b.device))
            b, s, lv = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
            keep = nms(b, s, lv, cfg["nms_threshold"], cfg["post_nms_top_n_test"])
            props.append(b[keep])
        return props


def rois_of(props):
    return torch.cat([torch.cat([torch.full((p.shape[0], 1), float(i), device=p.device), p], 1)
                      for i, p in enumerate(props)])


class RoiHeads(nn.Module):
    def __init__(self, cfg, ch, classes):
        super().__init__()
        self.cfg, self.k = cfg, classes
        r = cfg["pooler_resolution"]
        if cfg["head"] == "4conv1fc":
            self.convs = nn.ModuleList(
                [ConvUnit(ch if i == 0 else cfg["conv_dim"], cfg["conv_dim"], 3, 1, cfg["head_bn"], True) for i in range(4)])
            self.fc6 = nn.Linear(cfg["conv_dim"] * r * r, cfg["fc_dim"])
        else:
            self.fc6 = nn.Linear(ch * r * r, cfg["fc_dim"])
            self.fc7 = nn.Linear(cfg["fc_dim"], cfg["fc_dim"])
        self.cls_score = nn.Linear(cfg["fc_dim"], classes + 1)
        self.bbox_pred = nn.Linear(cfg["fc_dim"], 4 * (classes + 1))
        self.strides = [4, 8, 16, 32]

    def pool(self, feats, rois):
        """Multi-level RoIAlign: level floor(4 + log2(sqrt(area) / 224)) in [2, 5] (FPN eq. 1)."""
        r, sr = self.cfg["pooler_resolution"], max(self.cfg["sampling_ratio"], 1)
        b = rois[:, 1:]
        s = ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)).sqrt()
        lvl = (torch.log2(s / 224 + 1e-6) + 4).floor().clamp(2, 5).long() - 2
        out = torch.zeros(rois.shape[0], feats[0].shape[1], r, r, device=feats[0].device)
        for l, f in enumerate(feats[:4]):
            idx = torch.nonzero(lvl == l).squeeze(1)
            if idx.numel():
                out[idx] = roi_align(f, rois[idx], r, 1.0 / self.strides[l], sr)
        return out

    def forward(self, feats, rois):
        """Raw outputs on rois [R, 5]: class logits [R, K+1], deltas [R, 4(K+1)]."""
        x = self.pool(feats, rois)
        if hasattr(self, "convs"):
            for c in self.convs:
                x = c(x)
            x = F.relu(self.fc6(x.flatten(1)))
        else:
            x = F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))
        return self.cls_score(x), self.bbox_pred(x)

    def detect(self, feats, props, sizes):
        cfg, k1 = self.cfg, self.k + 1
        logits, deltas = self(feats, rois_of(props))
        probs = logits.softmax(-1)
        out, start = [], 0
        for (h, w), p in zip(sizes, props):
            n = p.shape[0]
            b = clip(decode(deltas[start:start + n], p, cfg["bbox_weights"]).reshape(-1, 4), h, w)
            b = b.reshape(n, k1, 4)[:, 1:].reshape(-1, 4)
            s = probs[start:start + n, 1:].reshape(-1)
            lab = torch.arange(self.k, device=p.device).repeat(n)
            start += n
            keep = (s > cfg["score_threshold"]) & nonempty(b)
            b, s, lab = b[keep], s[keep], lab[keep]
            keep = nms(b, s, lab, cfg["nms_threshold"], cfg["detections_per_image"])
            out.append((b[keep], s[keep], lab[keep]))
        return out


# ---------------------------------------------------------------- detector

class Detector(nn.Module):
    """Keys backbone.*, fpn.*, and retina.* or rpn.* + roi_heads.* (detnas's names)."""

    def __init__(self, info):
        super().__init__()
        space, cfg = info["space"], info["detector"]
        self.info, self.classes = info, info["classes"]
        self.input = info["input"]
        self.backbone = Backbone(space, info["choices"])
        ch, c = space["widths"], cfg["fpn_channels"]
        head = cfg["head"]
        self.kind = head["kind"]
        if self.kind == "retinanet":
            self.fpn = Fpn(ch[1:], c, cfg["fpn_bn"], "p6p7")
            self.retina = RetinaHead(head, c, len(self.classes))
        else:
            self.fpn = Fpn(ch, c, cfg["fpn_bn"], "maxpool")
            self.rpn = Rpn(head["rpn"], c)
            self.roi_heads = RoiHeads(head["roi"], c, len(self.classes))

    def pyramid(self, x):
        c = self.backbone(x)
        return self.fpn(c[1:] if self.kind == "retinanet" else c)

    @torch.no_grad()
    def forward(self, x, sizes):
        """Detections of a prepared batch x [N, 3, H, W] whose images are sizes[i] = (h, w):
        per image (boxes [K, 4] in x's pixels, scores [K], labels [K])."""
        p = self.pyramid(x)
        if self.kind == "retinanet":
            return self.retina.detect(p, sizes)
        return self.roi_heads.detect(p, self.rpn.proposals(p, sizes), sizes)

    @torch.no_grad()
    def trace(self, x, sizes, proposals=None):
        """Intermediate outputs under detnas's trace names (`Detector::trace`). The box head
        runs on `proposals` when given (detnas's own), else on this file's."""
        p = self.pyramid(x)
        first = 3 if self.kind == "retinanet" else 2
        out = {f"p{l + first}": t for l, t in enumerate(p)}
        if self.kind == "retinanet":
            for l, (c, r) in enumerate(zip(*self.retina(p))):
                out[f"cls.{l}"], out[f"reg.{l}"] = c, r
        else:
            for l, (o, r) in enumerate(zip(*self.rpn(p))):
                out[f"rpn_obj.{l}"], out[f"rpn_reg.{l}"] = o, r
            mine = self.rpn.proposals(p, sizes)
            for i, b in enumerate(mine):
                out[f"proposals.{i}"] = b
            out["roi_cls"], out["roi_reg"] = self.roi_heads(p, rois_of(proposals or mine))
        return out

    def prepare(self, images):
        """Network input of uint8 [H, W, 3] RGB images (or PIL images): each resized (short
        side to min_size, long side at most max_size; bilinear, half-pixel centres), padded
        with zeros to a multiple of divisibility, then the input convention. Returns the batch,
        each image's resized (h, w) and its (sx, sy) scale."""
        cfg = self.input
        planes, sizes, scales = [], [], []
        for im in images:
            if not isinstance(im, torch.Tensor):
                im = torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8).reshape(im.height, im.width, 3)
            h0, w0 = im.shape[0], im.shape[1]
            s = cfg["min_size"] / min(h0, w0)
            if max(h0, w0) * s > cfg["max_size"]:
                s = cfg["max_size"] / max(h0, w0)
            w, h = max(math.floor(w0 * s + 0.5), 1), max(math.floor(h0 * s + 0.5), 1)
            x = im.permute(2, 0, 1).float()[None]
            if (h, w) != (h0, w0):
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
            planes.append(x[0])
            sizes.append((h, w))
            scales.append((w / w0, h / h0))
        d = cfg["divisibility"]
        ph = -(-max(h for h, _ in sizes) // d) * d
        pw = -(-max(w for _, w in sizes) // d) * d
        batch = torch.zeros(len(planes), 3, ph, pw)
        for i, x in enumerate(planes):
            batch[i, :, : x.shape[1], : x.shape[2]] = x
        conv = cfg["convention"]
        if conv["kind"] == "official-bgr":
            batch = batch.flip(1)
        else:
            mean = torch.tensor(conv["mean"]).reshape(1, 3, 1, 1)
            std = torch.tensor(conv["std"]).reshape(1, 3, 1, 1)
            batch = (batch / 255.0 - mean) / std
        return batch, sizes, scales

    @torch.no_grad()
    def predict(self, images):
        """Detections in each image's own pixels: [(boxes [K, 4] x1 y1 x2 y2, scores, labels)],
        on the device of the detector's parameters (`det.to("cuda")` runs on a GPU)."""
        x, sizes, scales = self.prepare(images)
        device = next(self.parameters()).device
        out = []
        for (b, s, l), (sx, sy) in zip(self(x.to(device), sizes), scales):
            out.append((b / torch.tensor([sx, sy, sx, sy], device=device), s, l))
        return out


def load(export_dir):
    """The exported detector in evaluation mode, weights loaded with strict=True."""
    with open(os.path.join(export_dir, "arch.json")) as f:
        info = json.load(f)
    det = Detector(info)
    det.load_state_dict(read_safetensors(os.path.join(export_dir, "detector.safetensors")), strict=True)
    return det.eval()


def check(export_dir):
    """Largest difference of this file's outputs from detnas's (reference.safetensors: the
    prepared input, every traced output and the final detections of a few test images),
    relative to each tensor's largest magnitude (at least 1). Prints one JSON line."""
    det = load(export_dir)
    ref = read_safetensors(os.path.join(export_dir, "reference.safetensors"))
    n = int(ref["sizes"].shape[0])
    sizes = [tuple(int(v) for v in ref["sizes"][i]) for i in range(n)]
    x = ref["input"]
    rows = {}

    def diff(name, got, want):
        if got.shape != want.shape:
            raise SystemExit(f"{name}: shape {tuple(got.shape)} vs detnas {tuple(want.shape)}")
        e = ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1.0)).item() if got.numel() else 0.0
        rows[name] = max(rows.get(name, 0.0), e)

    images = [ref[f"image.{i}"] for i in range(n)]
    prepared, psizes, _ = det.prepare(images)
    diff("input", prepared, x)
    if psizes != sizes:
        raise SystemExit(f"prepared sizes {psizes} vs detnas {sizes}")
    props = [ref[f"proposals.{i}"] for i in range(n)] if det.kind != "retinanet" else None
    for k, v in det.trace(x, sizes, props).items():
        diff(k, v, ref[k])
    for i, (b, s, l) in enumerate(det(x, sizes)):
        order = pair_detections((b, s, l), (ref[f"boxes.{i}"], ref[f"scores.{i}"], ref[f"labels.{i}"]))
        if order is None:
            rows["labels"] = 1.0
            continue
        diff("boxes", b[order], ref[f"boxes.{i}"])
        diff("scores", s[order], ref[f"scores.{i}"])
    print(json.dumps({"max_relative_difference": max(rows.values()), "outputs": rows}))


def pair_detections(mine, theirs):
    """For each of `theirs` detections (boxes, scores, labels) in order, the index of the
    nearest unpaired one of `mine` with its label and a score within 1e-4: detections of equal
    scores may come in either order. None when the counts differ or one finds no partner."""
    (b, s, l), (rb, rs, rl) = mine, theirs
    if len(s) != len(rs):
        return None
    free, order = [True] * len(s), []
    for i in range(len(rs)):
        best, at = None, None
        for j in range(len(s)):
            if free[j] and int(l[j]) == int(rl[i]) and abs(float(s[j]) - float(rs[i])) <= 1e-4:
                d = float((b[j] - rb[i]).abs().max())
                if best is None or d < best:
                    best, at = d, j
        if at is None:
            return None
        free[at] = False
        order.append(at)
    return order


def bench(export_dir, reps=10, size=None):
    """Latency of the whole detection (backbone to NMS) of the first reference image (resized
    to `size` = (h, w) when given, then padded), batch 1, fp32, on the CPU with torch's
    threads: the median of `reps` runs after one warm-up. Prints one JSON line."""
    import time
    det = load(export_dir)
    ref = read_safetensors(os.path.join(export_dir, "reference.safetensors"))
    x, sizes, _ = det.prepare([ref["image.0"]])
    if size:
        h, w = sizes[0]
        r = F.interpolate(x[:, :, :h, :w], size=size, mode="bilinear", align_corners=False)
        d = det.input["divisibility"]
        x = torch.zeros(1, 3, -(-size[0] // d) * d, -(-size[1] // d) * d)
        x[:, :, : size[0], : size[1]] = r
        sizes = [tuple(size)]
    det(x, sizes)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        det(x, sizes)
        times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({"runtime": f"PyTorch {torch.__version__} eager", "device": "cpu", "threads": torch.get_num_threads(),
                      "precision": "fp32", "batch": 1, "input": list(x.shape[-2:]), "nms": True,
                      "median_ms": 1000 * times[len(times) // 2], "reps": reps}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    elif len(sys.argv) in (3, 4, 6) and sys.argv[1] == "bench":
        bench(sys.argv[2], int(sys.argv[3]) if len(sys.argv) >= 4 else 10,
              (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) == 6 else None)
    else:
        raise SystemExit(__doc__)
