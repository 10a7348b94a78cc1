"""PyTorch reference of detnas's detectors (crates/detect), for `bench/run.sh`.

The same networks as detnas — the official DetNAS supernet as backbone (bench.py), FPN,
RetinaNet head or RPN + RoIAlign box head, with the same parameter names, anchors, box coding,
matching, sampling, losses and post-processing — written the way a PyTorch user writes them:
eager modules, torchvision's `roi_align` / `batched_nms` / `box_iou`, pycocotools for COCO AP.
The FPN, the heads' modules and the box coding are those of the exported detector's own
definition (`crates/pipeline/export/model.py`, what `detnas export` writes); this file adds the
supernet backbone, training, fp32 head outputs under autocast and torchvision's kernels.

    python detection.py check --dir EXPORT              numeric check of both demo detectors
    python detection.py det-{train,infer}-{retinanet,fpn}-{demo,800} --dir EXPORT [--reps R]
                        [--memory-format nchw|channels-last] [--precision fp32|bf16]
    python detection.py candidate --dir EXPORT/candidate [--reps R]

EXPORT is the folder `detnas bench export` writes. Prints one JSON line like `detnas bench`. The
detection items start from detnas's own initial weights (`det-{head}-{scale}-init.safetensors`,
when the export has them), so both sides post-process the same detections, and report
`detections_per_image`; the timing follows detnas's protocol (first run of each new path,
then its second run: `first_seconds`, `warm_seconds`, throughput from the second runs).
"""
import argparse
import contextlib
import io
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou, roi_align

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# The exported detector's own definition (what `detnas export` writes as model.py): its
# layers, heads and box coding are detnas's; this file adds the supernet backbone, training
# and torchvision's kernels.
sys.path.insert(0, os.path.join(HERE, "..", "..", "crates", "pipeline", "export"))
import bench  # noqa: E402  (the supernet, timing and memory helpers)
import model as exported  # noqa: E402
from model import Fpn, anchor_grid, clip, decode  # noqa: E402


# ---------------------------------------------------------------- layers

class Backbone(nn.Module):
    """The supernet without its classification head: C2..C5 of a path."""

    def __init__(self, space):
        super().__init__()
        full = bench.Supernet(space, 1)
        self.stem, self.features = full.stem, full.features
        ends, n = [], 0
        for d in space["depths"]:
            n += d
            ends.append(n - 1)
        self.ends = ends

    def forward(self, x, path):
        x = self.stem(x)
        out = []
        for i, c in enumerate(path):
            x = self.features[i][str(c)](x)
            if i in self.ends:
                out.append(x)
        return out


# ---------------------------------------------------------------- boxes

def encode(ref, gt, weights=(1.0, 1.0, 1.0, 1.0)):
    wx, wy, ww, wh = weights
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    rx, ry = ref[:, 0] + 0.5 * rw, ref[:, 1] + 0.5 * rh
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return torch.stack([wx * (gx - rx) / rw, wy * (gy - ry) / rh, ww * torch.log(gw / rw), wh * torch.log(gh / rh)], 1)


def match(iou, high, low, low_quality):
    """torchvision's Matcher: index of the best ground truth, -1 below `low`, -2 between."""
    if iou.shape[0] == 0:
        return torch.full((iou.shape[1],), -1, dtype=torch.int64, device=iou.device)
    vals, idx = iou.max(0)
    m = idx.clone()
    m[vals < low] = -1
    m[(vals >= low) & (vals < high)] = -2
    if low_quality:
        best, _ = iou.max(1, keepdim=True)
        hit = ((iou == best) & (best > 0)).any(0)
        m[hit] = idx[hit]
    return m


def sample(m, per_image, fraction):
    pos = torch.nonzero(m >= 0).squeeze(1)
    neg = torch.nonzero(m == -1).squeeze(1)
    n_pos = min(pos.numel(), int(per_image * fraction))
    n_neg = min(neg.numel(), per_image - n_pos)
    return (pos[torch.randperm(pos.numel(), device=m.device)[:n_pos]],
            neg[torch.randperm(neg.numel(), device=m.device)[:n_neg]])


def smooth_l1(a, b, beta):
    return F.smooth_l1_loss(a, b, reduction="sum", beta=beta) if beta >= 1e-5 else (a - b).abs().sum()


# ---------------------------------------------------------------- heads

class RetinaHead(exported.RetinaHead):
    """The exported head (same modules and names), fp32 outputs, training losses and
    torchvision's NMS."""

    def forward(self, feats):
        # (fp32 heads outputs: under bf16 autocast, decoding stays exact, as in detnas.)
        cls, reg = super().forward(feats)
        return [c.float() for c in cls], [r.float() for r in reg]

    def anchors(self, feats):
        return anchor_grid(self.sizes, self.cfg["aspect_ratios"], self.strides,
                           [f.shape[-2:] for f in feats], feats[0].device)

    def losses(self, feats, targets):
        cfg = self.cfg
        cls, reg = self(feats)
        anchors = torch.cat(self.anchors(feats))
        cls, reg = torch.cat(cls, 1), torch.cat(reg, 1)
        cls_l, box_l, num_pos = [], [], 0
        for i, (boxes, labels) in enumerate(targets):
            with torch.no_grad():
                m = match(box_iou(boxes, anchors), cfg["fg_iou"], cfg["bg_iou"], True)
            valid = m != -2
            pos = torch.nonzero(m >= 0).squeeze(1)
            num_pos += pos.numel()
            matched = m.clamp(min=0)
            onehot = F.one_hot(labels[matched], self.k).float() * (m >= 0).float()[:, None]
            x = cls[i][valid]
            t = onehot[valid]
            p = x.sigmoid()
            ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
            p_t = p * t + (1 - p) * (1 - t)
            a = cfg["focal_alpha"]
            cls_l.append((ce * (1 - p_t) ** cfg["focal_gamma"] * (t * a + (1 - t) * (1 - a))).sum())
            if pos.numel():
                tgt = encode(anchors[pos], boxes[matched[pos]])
                box_l.append(smooth_l1(reg[i][pos], tgt, cfg["smooth_l1_beta"]))
        norm = max(num_pos, 1)
        return torch.stack(cls_l).sum() / norm + (torch.stack(box_l).sum() / norm if box_l else reg.sum() * 0)

    def detect(self, feats, sizes):
        cfg = self.cfg
        cls, reg = self(feats)
        anchors = self.anchors(feats)
        out = []
        for i, (h, w) in enumerate(sizes):
            boxes, scores, labels = [], [], []
            for l, a in enumerate(anchors):
                s = cls[l][i].sigmoid().reshape(-1)
                cand = torch.nonzero(s > cfg["score_threshold"]).squeeze(1)
                n = min(cand.numel(), cfg["pre_nms_top_n"])
                if n == 0:
                    continue
                top, order = s[cand].topk(n)
                flat = cand[order]
                ai, lab = flat // self.k, flat % self.k
                boxes.append(clip(decode(reg[l][i][ai], a[ai]), h, w))
                scores.append(top)
                labels.append(lab)
            if not boxes:
                dev = feats[0].device
                out.append((torch.zeros(0, 4, device=dev), torch.zeros(0, device=dev),
                            torch.zeros(0, dtype=torch.int64, device=dev)))
                continue
            b, s, lab = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = batched_nms(b, s, lab, cfg["nms_threshold"])[: cfg["detections_per_image"]]
            out.append((b[keep], s[keep], lab[keep]))
        return out


class Rpn(exported.Rpn):
    """The exported RPN (same modules and names), fp32 outputs, with training targets and
    torchvision's NMS."""

    def raw(self, feats):
        obj, reg = exported.Rpn.forward(self, feats)
        return [o.float() for o in obj], [r.float() for r in reg]

    def forward(self, feats, sizes, targets=None):
        cfg = self.cfg
        obj, reg = self.raw(feats)
        anchors = anchor_grid(self.sizes, cfg["aspect_ratios"], self.strides,
                              [f.shape[-2:] for f in feats], feats[0].device)
        train = targets is not None
        pre = cfg["pre_nms_top_n_train" if train else "pre_nms_top_n_test"]
        post = cfg["post_nms_top_n_train" if train else "post_nms_top_n_test"]
        props = []
        with torch.no_grad():
            for i, (h, w) in enumerate(sizes):
                boxes, scores, levels = [], [], []
                for l in range(len(feats)):
                    o = obj[l][i]
                    s, idx = o.topk(min(o.numel(), pre))
                    b = clip(decode(reg[l][i][idx], anchors[l][idx]), h, w)
                    ms = max(cfg["min_size"], 1e-3)
                    keep = torch.nonzero(((b[:, 2] - b[:, 0]) >= ms) & ((b[:, 3] - b[:, 1]) >= ms)).squeeze(1)
                    boxes.append(b[keep])
                    scores.append(s[keep])
                    levels.append(torch.full((keep.numel(),), l, dtype=torch.int64, device=b.device))
                b, s, lv = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
                keep = batched_nms(b, s, lv, cfg["nms_threshold"])[:post]
                props.append(b[keep])
        if not train:
            return props, None
        anchors = torch.cat(anchors)
        obj, reg = torch.cat(obj, 1), torch.cat(reg, 1)
        obj_l, box_l, sampled = [], [], 0
        for i, (boxes, _) in enumerate(targets):
            with torch.no_grad():
                m = match(box_iou(boxes, anchors), cfg["fg_iou"], cfg["bg_iou"], True)
            pos, neg = sample(m, cfg["batch_per_image"], cfg["positive_fraction"])
            idx = torch.cat([pos, neg])
            sampled += idx.numel()
            lab = torch.cat([torch.ones(pos.numel(), device=obj.device), torch.zeros(neg.numel(), device=obj.device)])
            obj_l.append(F.binary_cross_entropy_with_logits(obj[i][idx], lab, reduction="sum"))
            if pos.numel():
                box_l.append(smooth_l1(reg[i][pos], encode(anchors[pos], boxes[m[pos]]), cfg["smooth_l1_beta"]))
        norm = max(sampled, 1)
        loss = torch.stack(obj_l).sum() / norm + (torch.stack(box_l).sum() / norm if box_l else reg.sum() * 0)
        return props, loss


def rois_of(props):
    return torch.cat([torch.cat([torch.full((p.shape[0], 1), float(i), device=p.device), p.float()], 1) for i, p in enumerate(props)])


class RoiHeads(exported.RoiHeads):
    """The exported box head (same modules and names), pooling with torchvision's RoIAlign,
    fp32 outputs, training losses and torchvision's NMS."""

    def pool(self, feats, rois):
        """torchvision-style multi-scale RoIAlign, maskrcnn_benchmark's level mapping."""
        r, sr = self.cfg["pooler_resolution"], self.cfg["sampling_ratio"]
        b = rois[:, 1:]
        s = ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)).sqrt()
        lvl = (torch.log2(s / 224 + 1e-6) + 4).floor().clamp(2, 5).long() - 2
        out = torch.zeros(rois.shape[0], feats[0].shape[1], r, r, device=feats[0].device)
        for l, f in enumerate(feats[:4]):
            idx = torch.nonzero(lvl == l).squeeze(1)
            if idx.numel():
                out[idx] = roi_align(f, rois[idx], (r, r), 1.0 / self.strides[l], sr, aligned=False)
        return out

    def forward(self, feats, rois):
        logits, deltas = super().forward(feats, rois)
        return logits.float(), deltas.float()

    def losses(self, feats, props, targets):
        cfg = self.cfg
        rois, labels, reg_t = [], [], []
        with torch.no_grad():
            for i, (p, (boxes, lab)) in enumerate(zip(props, targets)):
                p = torch.cat([p, boxes])
                m = match(box_iou(boxes, p), cfg["fg_iou"], cfg["bg_iou"], False)
                pos, neg = sample(m, cfg["batch_per_image"], cfg["positive_fraction"])
                idx = torch.cat([pos, neg])
                l = torch.zeros(idx.numel(), dtype=torch.int64, device=p.device)
                l[: pos.numel()] = lab[m[pos]] + 1
                if pos.numel():
                    reg_t.append(encode(p[pos], boxes[m[pos]], cfg["bbox_weights"]))
                rois.append(torch.cat([torch.full((idx.numel(), 1), float(i), device=p.device), p[idx]], 1))
                labels.append(l)
        rois, labels = torch.cat(rois), torch.cat(labels)
        logits, deltas = self(feats, rois)
        n = max(labels.numel(), 1)
        loss = F.cross_entropy(logits, labels, reduction="sum") / n
        pos = torch.nonzero(labels > 0).squeeze(1)
        if pos.numel():
            d = deltas[pos].reshape(-1, self.k + 1, 4)[torch.arange(pos.numel(), device=pos.device), labels[pos]]
            loss = loss + smooth_l1(d, torch.cat(reg_t), cfg["smooth_l1_beta"]) / n
        return loss

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
            keep = (s > cfg["score_threshold"]) & ((b[:, 2] - b[:, 0]) > 1e-3) & ((b[:, 3] - b[:, 1]) > 1e-3)
            b, s, lab = b[keep], s[keep], lab[keep]
            keep = batched_nms(b, s, lab, cfg["nms_threshold"])[: cfg["detections_per_image"]]
            out.append((b[keep], s[keep], lab[keep]))
        return out


class Detector(nn.Module):
    """Keys backbone.*, fpn.*, and retina.* or rpn.* + roi_heads.* (as detnas)."""

    def __init__(self, cfg, space, classes):
        super().__init__()
        self.backbone = Backbone(space)
        ch, c = space["widths"], cfg["fpn_channels"]
        head = cfg["head"]
        self.kind = head["kind"]
        if self.kind == "retinanet":
            self.fpn = Fpn(ch[1:], c, cfg["fpn_bn"], "p6p7")
            self.retina = RetinaHead(head, c, classes)
        else:
            self.fpn = Fpn(ch, c, cfg["fpn_bn"], "maxpool")
            self.rpn = Rpn(head["rpn"], c)
            self.roi_heads = RoiHeads(head["roi"], c, classes)

    def pyramid(self, x, path):
        c = self.backbone(x, path)
        return self.fpn(c[1:] if self.kind == "retinanet" else c)

    def losses(self, x, sizes, targets, path):
        p = self.pyramid(x, path)
        if self.kind == "retinanet":
            return self.retina.losses(p, targets)
        props, rpn_loss = self.rpn(p, sizes, targets)
        return rpn_loss + self.roi_heads.losses(p, props, targets)

    @torch.no_grad()
    def detect(self, x, sizes, path):
        p = self.pyramid(x, path)
        if self.kind == "retinanet":
            return self.retina.detect(p, sizes)
        props, _ = self.rpn(p, sizes)
        return self.roi_heads.detect(p, props, sizes)

    @torch.no_grad()
    def observe(self, x, sizes, path):
        """BN recalibration forward: every BN-bearing module in training mode."""
        p = self.pyramid(x, path)
        if self.kind == "retinanet":
            self.retina(p)
        else:
            props, _ = self.rpn(p, sizes)
            self.roi_heads(p, rois_of(props))


def load(det, path):
    state = bench.read_safetensors(path)
    r = det.load_state_dict(state, strict=False)
    bad = [k for k in r.missing_keys if not k.endswith("num_batches_tracked")]
    assert not bad and not r.unexpected_keys, (bad, r.unexpected_keys)


# ---------------------------------------------------------------- items

def check(d):
    """Eval-mode outputs of the same weights against detnas's trace, both detectors."""
    worst, rows = 0.0, {}
    space = json.load(open(f"{d}/space.json"))
    for head in ["retinanet", "fpn"]:
        det = Detector(json.load(open(f"{d}/det-{head}.json")), space, 6).eval()
        load(det, f"{d}/det-{head}.safetensors")
        io_ = bench.read_safetensors(f"{d}/det-{head}-io.safetensors")
        x = io_["x"]
        sizes = [(128, 128), (120, 100)]
        for p in json.load(open(f"{d}/det-{head}-paths.json")):
            path = [int(c) for c in p]
            got = {}
            with torch.no_grad():
                pyr = det.pyramid(x, path)
                first = 3 if head == "retinanet" else 2
                for l, t in enumerate(pyr):
                    got[f"p{l + first}"] = t
                if head == "retinanet":
                    cls, reg = det.retina(pyr)
                    for l, (c, r) in enumerate(zip(cls, reg)):
                        got[f"cls.{l}"], got[f"reg.{l}"] = c, r
                else:
                    obj, reg = det.rpn.raw(pyr)
                    for l, (o, r) in enumerate(zip(obj, reg)):
                        got[f"rpn_obj.{l}"], got[f"rpn_reg.{l}"] = o, r
                    # The box head on detnas's proposals (isolates it from NMS order ties).
                    props = [io_[f"{p}.proposals.{i}"] for i in range(2)]
                    got["roi_cls"], got["roi_reg"] = det.roi_heads(pyr, rois_of(props))
                    # And our own proposals: the same boxes.
                    mine, _ = det.rpn(pyr, sizes)
                    for i, b in enumerate(mine):
                        got[f"proposals.{i}"] = b
            for k, v in got.items():
                ref = io_[f"{p}.{k}"]
                assert v.shape == ref.shape, (head, p, k, v.shape, ref.shape)
                e = ((v - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item() if v.numel() else 0.0
                rows[f"{head}.{k}"] = max(rows.get(f"{head}.{k}", 0.0), e)
                worst = max(worst, e)
    return worst, rows


def bench_targets(d, scale):
    t = json.load(open(f"{d}/det-targets-{scale}.json"))
    return [(torch.tensor(b, dtype=torch.float32), torch.tensor([0, 1, 2])) for b in t]


def det_item(item, d, reps, dev, memory_format="nchw", precision="fp32"):
    _, mode, head, scale = item.split("-")
    space = json.load(open(f"{d}/space.json"))
    cfg = json.load(open(f"{d}/det-{head}.json"))
    if scale == "800":
        space, cfg["fpn_channels"], (h, w, batch) = bench.SMALL, 256, (800, 1344, 2)
    else:
        h, w, batch = 128, 128, 8
    # Inference at full load, as detnas's item: every candidate passes the score threshold.
    (cfg["head"] if cfg["head"]["kind"] == "retinanet" else cfg["head"]["roi"])["score_threshold"] = 0.0
    det = Detector(cfg, space, 6)
    init = f"{d}/det-{head}-{scale}-init.safetensors"
    if os.path.exists(init):
        load(det, init)
    det = bench.layout(det.to(dev), memory_format)
    paths = [[int(c) for c in p] for p in json.load(open(f"{d}/paths-{'small' if scale == '800' else 'demo'}.json"))]
    x = bench.layout((torch.rand(batch, 3, h, w) * 255).to(dev), memory_format)
    sizes = [(h, w)] * batch
    targets = [(b.to(dev), l.to(dev)) for b, l in bench_targets(d, scale)]
    found = [0, 0]
    if mode == "train":
        det.train()

        def step(r):
            with bench.amp(dev, precision, True):
                loss = det.losses(x, sizes, targets, paths[r])
            loss.backward()
            bench.sgd_step(det, paths[r], lr=0.01, wd=1e-4)
    else:
        det.eval()

        def step(r):
            with bench.amp(dev, precision, False):
                dets = det.detect(x, sizes, paths[r])
            found[0] += sum(len(s) for _, s, _ in dets)
            found[1] += len(dets)
    reps = min(reps, 2) if scale == "800" and dev.type == "cpu" else reps
    first, warm = bench.timed_paths(reps, step, bench.synchronizer(dev))
    extra = {"detections_per_image": found[0] / max(found[1], 1)} if mode != "train" else {}
    return first, warm, batch, extra


def candidate(d, reps, offset=0, dev=torch.device("cpu")):
    """BN recalibration (reset, cumulative averages, training-mode forwards without
    gradients, as the official code), inference, post-processing and pycocotools AP."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    import tomllib

    meta = json.load(open(f"{d}/meta.json"))
    ck = meta["checkpoint"]
    cfg = tomllib.load(open(f"{ck}/config.toml", "rb"))["detector"]
    det = Detector(cfg, meta["space"], len(meta["categories"]))
    load(det, f"{ck}/model.safetensors")
    det.to(dev)
    inputs = {k: v.to(dev) for k, v in bench.read_safetensors(f"{d}/inputs.safetensors").items()}
    recal = [inputs[f"recal.{i}.x"] for i in range(len(meta["recal"]))]
    recal_sizes = [[tuple(s) for s in b["sizes"]] for b in meta["recal"]]
    val = [(inputs[f"val.{i}.x"], b) for i, b in enumerate(meta["val"])]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(f"{d}/gt.json")
    paths = [[int(c) for c in p] for p in meta["paths"]][offset * (reps + 1):(offset + 1) * (reps + 1)]
    assert len(paths) == reps + 1, "export more candidate paths (bench export --reps/--threads)"
    aps = []

    def one(r):
        path = paths[r]
        for m in det.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        det.train()
        for x, s in zip(recal, recal_sizes):
            det.observe(x, s, path)
        det.eval()
        res = []
        for x, b in val:
            dets = det.detect(x, [tuple(s) for s in b["sizes"]], path)
            for (bx, sc, lab), iid, (sx, sy) in zip(dets, b["ids"], b["scales"]):
                for (x1, y1, x2, y2), s, l in zip(bx.tolist(), sc.tolist(), lab.tolist()):
                    res.append({"image_id": iid, "category_id": meta["categories"][l],
                                "bbox": [x1 / sx, y1 / sy, (x2 - x1) / sx, (y2 - y1) / sy], "score": s})
        with contextlib.redirect_stdout(io.StringIO()):
            e = COCOeval(gt, gt.loadRes(res) if res else COCO(), "bbox")
            e.evaluate()
            e.accumulate()
            e.summarize()
        if r > 0:
            aps.append(e.stats[0])
            done.append("".join(map(str, path)))

    done = []
    t = bench.timed(reps, one, bench.synchronizer(dev))
    return t, aps, done


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("item")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--offset", type=int, default=0, help="candidate: which block of reps+1 exported paths")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timed items; the check runs on the CPU)")
    ap.add_argument("--memory-format", default="nchw", choices=["nchw", "channels-last"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    a = ap.parse_args()
    dev = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.item == "check":
        worst, rows = check(a.dir)
        print(json.dumps({"item": "check-det", "max_relative_difference": worst, "outputs": rows}))
        sys.exit(0 if worst < 1e-4 else 1)
    extra = {}
    if a.item == "candidate":
        t, aps, done = candidate(a.dir, a.reps, a.offset, dev)
        per, unit = 1, "candidates/s"
        extra["ap"], extra["paths"] = aps, done
        s = sorted(t)
        timing = {"median": per / s[len(s) // 2], "min": per / s[-1], "max": per / s[0],
                  "median_seconds": s[len(s) // 2], "reps": len(t)}
    else:
        first, warm, per, extra = det_item(a.item, a.dir, a.reps, dev, a.memory_format, a.precision)
        unit = "img/s"
        timing = bench.timing_fields(first, warm, per)
    print(json.dumps({"item": a.item, "impl": "pytorch", "unit": unit, **timing,
                      "threads": torch.get_num_threads(), "device": bench.describe(dev), "peak_rss_mb": bench.peak_rss_mb(),
                      "memory_format": a.memory_format.replace("-", ""), "precision": a.precision,
                      "torch": torch.__version__, **bench.gpu_memory(dev), **extra}))


if __name__ == "__main__":
    main()
