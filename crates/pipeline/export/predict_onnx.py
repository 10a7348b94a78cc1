"""Detections of the exported detector on image files, as COCO results, with ONNX Runtime
(`detector.onnx`, and `box_head.onnx` for Faster R-CNN, beside this file; needs onnxruntime,
numpy and Pillow).

    python predict_onnx.py IMAGE... --out detections.json [--gt GT.json] [--threads N]
    python predict_onnx.py check                # the graphs' raw outputs and the detections
                                                # against detnas's (reference.safetensors)
    python predict_onnx.py bench [REPS [H W]]   # latency on the first reference image,
                                                # resized to H x W when given

Each result is {image_id, category_id, bbox [x, y, w, h] in the image's pixels, score}. With
--gt (COCO instances), image ids are those of its images of the same file name; without, the
images are numbered 1.. in the order given. The graphs hold the network up to its raw head
outputs; this file prepares the images (resize with bilinear half-pixel sampling, padding,
input convention) and decodes, clips and suppresses boxes (and, for Faster R-CNN, makes the
proposals and pools them with RoIAlign) as detnas does (`crates/detect`). A graph exported
with `detnas export --onnx-nms` does that itself (inputs `images` and `image_sizes`, outputs
`num_detections`, `detection_boxes`, `detection_scores`, `detection_classes`); this file then
uses its detections, and `check` compares both ways with detnas's.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
BBOX_CLIP = math.log(1000.0 / 16)
DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8, "I32": np.int32, "BOOL": np.bool_}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k != "__metadata__":
            a, b = v["data_offsets"]
            out[k] = np.frombuffer(data[a:b], dtype=DTYPES[v["dtype"]]).reshape(v["shape"])
    return out


# ---------------------------------------------------------------- pre-processing

def resize(img, w, h):
    """Bilinear resampling with half-pixel centres and no antialiasing (detnas's), HWC uint8
    -> CHW float32."""
    h0, w0 = img.shape[:2]

    def axis(n_out, n):
        src = np.clip((np.arange(n_out) + 0.5) * n / n_out - 0.5, 0.0, n - 1)
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, n - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, fy = axis(h, h0)
    x0, x1, fx = axis(w, w0)
    p = img.astype(np.float32)
    fx, fy = fx[None, :, None], fy[:, None, None]
    top = p[y0][:, x0] * (1 - fx) + p[y0][:, x1] * fx
    bot = p[y1][:, x0] * (1 - fx) + p[y1][:, x1] * fx
    return (top * (1 - fy) + bot * fy).transpose(2, 0, 1)


def prepare(images, cfg):
    """The batch [N, 3, H, W], each image's resized (h, w) and its (sx, sy) scale."""
    planes, sizes, scales = [], [], []
    for im in images:
        h0, w0 = im.shape[:2]
        s = cfg["min_size"] / min(h0, w0)
        if max(h0, w0) * s > cfg["max_size"]:
            s = cfg["max_size"] / max(h0, w0)
        w, h = max(math.floor(w0 * s + 0.5), 1), max(math.floor(h0 * s + 0.5), 1)
        planes.append(resize(im, w, h))
        sizes.append((h, w))
        scales.append((np.float32(w) / np.float32(w0), np.float32(h) / np.float32(h0)))
    return batch_of(planes, sizes, cfg), sizes, scales


def batch_of(planes, sizes, cfg):
    """CHW planes padded with zeros into one batch (a multiple of the divisibility), then the
    input convention."""
    d = cfg["divisibility"]
    ph = -(-max(h for h, _ in sizes) // d) * d
    pw = -(-max(w for _, w in sizes) // d) * d
    batch = np.zeros((len(planes), 3, ph, pw), np.float32)
    for i, x in enumerate(planes):
        batch[i, :, : x.shape[1], : x.shape[2]] = x
    conv = cfg["convention"]
    if conv["kind"] == "official-bgr":
        batch = batch[:, ::-1].copy()
    else:
        mean = np.array(conv["mean"], np.float32).reshape(1, 3, 1, 1)
        std = np.array(conv["std"], np.float32).reshape(1, 3, 1, 1)
        batch = ((batch / np.float32(255.0) - mean) / std).astype(np.float32)
    return batch


# ---------------------------------------------------------------- boxes

def anchor_grid(sizes_per_level, ratios, strides, shapes):
    out = []
    for sizes, s, (h, w) in zip(sizes_per_level, strides, shapes):
        base = []
        for r in ratios:
            hr = math.sqrt(r)
            for z in sizes:
                bw, bh = z / hr, z * hr
                base.append([-bw / 2, -bh / 2, bw / 2, bh / 2])
        base = np.array(base, np.float32)
        y, x = np.meshgrid(np.arange(h, dtype=np.float32) * s, np.arange(w, dtype=np.float32) * s, indexing="ij")
        x, y = x.reshape(-1), y.reshape(-1)
        out.append((np.stack([x, y, x, y], 1)[:, None] + base[None]).reshape(-1, 4))
    return out


def decode(deltas, ref, weights=(1.0, 1.0, 1.0, 1.0)):
    wx, wy, ww, wh = (np.float32(v) for v in weights)
    r, k4 = deltas.shape
    w = ref[:, 2] - ref[:, 0]
    h = ref[:, 3] - ref[:, 1]
    cx = ref[:, 0] + np.float32(0.5) * w
    cy = ref[:, 1] + np.float32(0.5) * h
    d = deltas.reshape(r, k4 // 4, 4)
    dx, dy = d[..., 0] / wx, d[..., 1] / wy
    dw = np.minimum(d[..., 2] / ww, np.float32(BBOX_CLIP))
    dh = np.minimum(d[..., 3] / wh, np.float32(BBOX_CLIP))
    pcx, pcy = dx * w[:, None] + cx[:, None], dy * h[:, None] + cy[:, None]
    pw, ph = np.exp(dw) * w[:, None], np.exp(dh) * h[:, None]
    half = np.float32(0.5)
    return np.stack([pcx - half * pw, pcy - half * ph, pcx + half * pw, pcy + half * ph], 2).reshape(r, k4)


def clip(b, h, w):
    return np.stack([np.clip(b[:, 0], 0, w), np.clip(b[:, 1], 0, h), np.clip(b[:, 2], 0, w), np.clip(b[:, 3], 0, h)], 1)


def nonempty(b, min_size=1e-3, strict=True):
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return (w > min_size) & (h > min_size) if strict else (w >= min_size) & (h >= min_size)


def nms(boxes, scores, labels, threshold, limit=None):
    """Greedy NMS, torchvision's rule (a box is dropped when its IoU with a kept box of the same
    label exceeds threshold): boxes visited by descending score, ties lower index first. Returns
    the kept indices in that order, at most `limit` (the first kept boxes do not depend on the
    later ones, so the search stops there)."""
    order = np.argsort(-scores, kind="stable")
    b, lab = boxes[order], labels[order]
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    dropped = np.zeros(len(order), bool)
    keep = []
    thr = np.float32(threshold)
    for i in range(len(order)):
        if dropped[i]:
            continue
        keep.append(i)
        if len(keep) == limit:
            break
        r = b[i + 1:]
        iw = np.maximum(np.minimum(r[:, 2], b[i, 2]) - np.maximum(r[:, 0], b[i, 0]), 0)
        ih = np.maximum(np.minimum(r[:, 3], b[i, 3]) - np.maximum(r[:, 1], b[i, 1]), 0)
        inter = iw * ih
        union = area[i] + area[i + 1:] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
        dropped[i + 1:] |= (iou > thr) & (lab[i + 1:] == lab[i])
    return order[np.array(keep, np.int64)]


def top(scores, n):
    """Indices of the n largest, descending (ties lower index first)."""
    return np.argsort(-scores, kind="stable")[:n]


def roi_align(feat, rois, out, scale, sr):
    """RoIAlign, aligned=False (detnas's `roi_align`): [K, 5] rois on [N, C, H, W] ->
    [K, C, out, out]."""
    n, c, h, w = feat.shape
    if len(rois) == 0:
        return np.zeros((0, c, out, out), np.float32)
    table = feat.transpose(0, 2, 3, 1).reshape(n * h * w, c)
    b = rois[:, 0].astype(np.int64)
    x1, y1, x2, y2 = (rois[:, 1:] * np.float32(scale)).T
    bw = np.maximum(x2 - x1, 1.0) / out
    bh = np.maximum(y2 - y1, 1.0) / out
    steps = (np.arange(out * sr, dtype=np.float32) + 0.5) / sr
    ys = y1[:, None] + steps[None] * bh[:, None]
    xs = x1[:, None] + steps[None] * bw[:, None]

    def axis(v, size):
        ok = (v >= -1.0) & (v <= size)
        v = np.maximum(v, 0.0)
        low = np.floor(v).astype(np.int64)
        top_ = low >= size - 1
        low = np.where(top_, size - 1, low)
        high = np.where(top_, low, low + 1)
        v = np.where(top_, low.astype(np.float32), v)
        return ok, low, high, (v - low).astype(np.float32)

    oky, yl, yh, ly = axis(ys, h)
    okx, xl, xh, lx = axis(xs, w)
    base = (b * h * w)[:, None, None]
    at = lambda yy, xx: table[base + yy[:, :, None] * w + xx[:, None, :]]
    hy, hx = (1 - ly)[:, :, None, None], (1 - lx)[:, None, :, None]
    lyy, lxx = ly[:, :, None, None], lx[:, None, :, None]
    v = hy * hx * at(yl, xl) + hy * lxx * at(yl, xh) + lyy * hx * at(yh, xl) + lyy * lxx * at(yh, xh)
    v = v * (oky[:, :, None] & okx[:, None, :])[..., None]
    return v.reshape(len(rois), out, sr, out, sr, c).mean((2, 4)).transpose(0, 3, 1, 2).astype(np.float32)


# ---------------------------------------------------------------- the detector

class Detector:
    def __init__(self, export_dir=HERE, threads=None):
        with open(os.path.join(export_dir, "arch.json")) as f:
            self.info = json.load(f)
        self.classes = self.info["classes"]
        self.head = self.info["detector"]["head"]
        self.kind = self.head["kind"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(os.path.join(export_dir, "detector.onnx"), opts,
                                            providers=["CPUExecutionProvider"])
        self.box_head = None
        if self.kind != "retinanet":
            self.box_head = ort.InferenceSession(os.path.join(export_dir, "box_head.onnx"), opts,
                                                 providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        self.in_graph = "num_detections" in self.names

    def raw(self, x, sizes):
        """Every graph output by name, on a prepared batch of images of `sizes` (h, w)."""
        feed = {"images": x}
        if self.in_graph:
            feed["image_sizes"] = np.array(sizes, np.float32).reshape(-1, 2)
        return dict(zip(self.names, self.session.run(None, feed)))

    def detect(self, x, sizes, raw=None, in_graph=None):
        """(boxes, scores, labels) per image: the graph's own when it has them (or as
        `in_graph` says), else decoded here."""
        raw = raw if raw is not None else self.raw(x, sizes)
        if self.in_graph if in_graph is None else in_graph:
            return [(raw["detection_boxes"][i, :n], raw["detection_scores"][i, :n], raw["detection_classes"][i, :n])
                    for i, n in enumerate(raw["num_detections"])]
        return self._retina(raw, x, sizes) if self.kind == "retinanet" else self._rcnn(raw, sizes)[0]

    def _retina(self, raw, x, sizes):
        cfg, k = self.head, len(self.classes)
        out = []
        anchors = self._anchors(raw, x)
        for i, (h, w) in enumerate(sizes):
            boxes, scores, labels = [], [], []
            for l, a in enumerate(anchors):
                s = 1 / (1 + np.exp(-raw[f"cls.{l}"][i].reshape(-1)))
                idx = top(s, cfg["pre_nms_top_n"])
                idx = idx[s[idx] > cfg["score_threshold"]]
                ai, lab = idx // k, idx % k
                b = clip(decode(raw[f"reg.{l}"][i][ai], a[ai]), h, w)
                ok = nonempty(b)
                boxes.append(b[ok])
                scores.append(s[idx][ok])
                labels.append(lab[ok])
            b, s, lab = np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)
            keep = nms(b, s, lab, cfg["nms_threshold"], cfg["detections_per_image"])
            out.append((b[keep], s[keep], lab[keep]))
        return out

    def _anchors(self, raw, x):
        cfg = self.head
        spo = cfg["scales_per_octave"]
        sizes = [[b * 2 ** (i / spo) for i in range(spo)] for b in cfg["anchor_sizes"]]
        strides = [2 ** (l + 3) for l in range(len(sizes))]
        # Level l's map: the input halved (rounding up, as the stride-2 convs do) l + 3 times.
        shapes, (h, w) = [], x.shape[2:]
        for l in range(len(sizes) + 3):
            h, w = -(-h // 2), -(-w // 2)
            if l >= 2:
                shapes.append((h, w))
        return anchor_grid(sizes, cfg["aspect_ratios"], strides, shapes[: len(sizes)])

    def _rcnn(self, raw, sizes):
        rpn, roi, k = self.head["rpn"], self.head["roi"], len(self.classes)
        feats = [raw[f"p{l}"] for l in range(2, 6)]
        shapes = [f.shape[2:] for f in feats]
        h, w = shapes[-1]
        shapes.append((-(-h // 2), -(-w // 2)))
        anchors = anchor_grid([[s] for s in rpn["anchor_sizes"]], rpn["aspect_ratios"],
                              [2 ** (l + 2) for l in range(len(rpn["anchor_sizes"]))], shapes)
        props = []
        for i, (h, w) in enumerate(sizes):
            boxes, scores, levels = [], [], []
            for l in range(len(anchors)):
                o = raw[f"rpn_obj.{l}"][i]
                idx = top(o, rpn["pre_nms_top_n_test"])
                b = clip(decode(raw[f"rpn_reg.{l}"][i][idx], anchors[l][idx]), h, w)
                keep = nonempty(b, max(rpn["min_size"], 1e-3), strict=False)
                boxes.append(b[keep])
                scores.append(o[idx][keep])
                levels.append(np.full(int(keep.sum()), l))
            b, s, lv = np.concatenate(boxes), np.concatenate(scores), np.concatenate(levels)
            keep = nms(b, s, lv, rpn["nms_threshold"], rpn["post_nms_top_n_test"])
            props.append(b[keep])
        rois = np.concatenate([np.concatenate([np.full((len(p), 1), i, np.float32), p], 1) for i, p in enumerate(props)])
        pooled = self.pool(feats, rois)
        logits, deltas = self.box_head.run(None, {"pooled": pooled})
        e = np.exp(logits - logits.max(1, keepdims=True))
        probs = e / e.sum(1, keepdims=True)
        out, start = [], 0
        for (h, w), p in zip(sizes, props):
            n = len(p)
            b = clip(decode(deltas[start:start + n], p, roi["bbox_weights"]).reshape(-1, 4), h, w)
            b = b.reshape(n, k + 1, 4)[:, 1:].reshape(-1, 4)
            s = probs[start:start + n, 1:].reshape(-1)
            lab = np.tile(np.arange(k), n)
            start += n
            keep = (s > roi["score_threshold"]) & nonempty(b)
            b, s, lab = b[keep], s[keep], lab[keep]
            keep = nms(b, s, lab, roi["nms_threshold"], roi["detections_per_image"])
            out.append((b[keep], s[keep], lab[keep]))
        return out, props, logits, deltas

    def pool(self, feats, rois):
        r, sr = self.head["roi"]["pooler_resolution"], max(self.head["roi"]["sampling_ratio"], 1)
        b = rois[:, 1:]
        s = np.sqrt(np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0))
        lvl = np.clip(np.floor(np.log2(s / 224 + 1e-6) + 4), 2, 5).astype(np.int64) - 2
        out = np.zeros((len(rois), feats[0].shape[1], r, r), np.float32)
        for l, f in enumerate(feats):
            idx = np.nonzero(lvl == l)[0]
            if len(idx):
                out[idx] = roi_align(f, rois[idx], r, 1.0 / 2 ** (l + 2), sr)
        return out

    def predict(self, images):
        x, sizes, scales = prepare(images, self.info["input"])
        out = []
        for (b, s, l), (sx, sy) in zip(self.detect(x, sizes), scales):
            out.append((b / np.array([sx, sy, sx, sy], np.float32), s, l))
        return out


def check():
    """Largest relative difference of the graphs' outputs and of this file's detections from
    detnas's own (reference.safetensors). Prints one JSON line."""
    det = Detector()
    ref = read_safetensors(os.path.join(HERE, "reference.safetensors"))
    n = ref["sizes"].shape[0]
    sizes = [tuple(int(v) for v in ref["sizes"][i]) for i in range(n)]
    rows = {}

    def diff(name, got, want):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if got.shape != want.shape:
            raise SystemExit(f"{name}: shape {got.shape} vs detnas {want.shape}")
        e = float(np.abs(got - want).max() / max(np.abs(want).max(), 1.0)) if got.size else 0.0
        rows[name] = max(rows.get(name, 0.0), e)

    x, _, _ = prepare([ref[f"image.{i}"] for i in range(n)], det.info["input"])
    diff("input", x, ref["input"])
    raw = det.raw(ref["input"], sizes)
    for k, v in raw.items():
        if k in ref:
            diff(k, v, ref[k])
    if det.kind != "retinanet":
        _, props, logits, deltas = det._rcnn(raw, sizes)
        for i, p in enumerate(props):
            diff(f"proposals.{i}", p, ref[f"proposals.{i}"])
        diff("roi_cls", logits, ref["roi_cls"])
        diff("roi_reg", deltas, ref["roi_reg"])
    for in_graph in [False, True] if det.in_graph else [False]:
        at = " (graph)" if in_graph else ""
        for i, (b, s, l) in enumerate(det.detect(ref["input"], sizes, raw, in_graph)):
            order = pair_detections((b, s, l), (ref[f"boxes.{i}"], ref[f"scores.{i}"], ref[f"labels.{i}"]))
            if order is None:
                rows["labels" + at] = 1.0
                continue
            diff("boxes" + at, b[order], ref[f"boxes.{i}"])
            diff("scores" + at, s[order], ref[f"scores.{i}"])
    print(json.dumps({"max_relative_difference": max(rows.values()), "outputs": rows}))


def pair_detections(mine, theirs):
    """For each of `theirs` detections (boxes, scores, labels) in order, the index of the
    nearest unpaired one of `mine` with its label and a score within 1e-4: detections of equal
    scores may come in either order. None when the counts differ or one finds no partner."""
    (b, s, l), (rb, rs, rl) = mine, theirs
    if len(s) != len(rs):
        return None
    free, order = np.ones(len(s), bool), []
    for i in range(len(rs)):
        ok = free & (l == rl[i]) & (np.abs(s - rs[i]) <= 1e-4)
        if not ok.any():
            return None
        d = np.where(ok, np.abs(b - rb[i]).max(1), np.inf)
        at = int(np.argmin(d))
        free[at] = False
        order.append(at)
    return np.array(order, np.int64)


def bench(reps=10, size=None):
    """Latency of the whole detection (graphs and this file's decoding and NMS) of the first
    reference image (resized to `size` = (h, w) when given, then padded), batch 1, fp32, CPU:
    the median of `reps` runs after one warm-up. Prints one JSON line."""
    import time
    det = Detector()
    ref = read_safetensors(os.path.join(HERE, "reference.safetensors"))
    if size:
        sizes = [tuple(size)]
        x = batch_of([resize(ref["image.0"], size[1], size[0])], sizes, det.info["input"])
    else:
        x, sizes, _ = prepare([ref["image.0"]], det.info["input"])
    det.detect(x, sizes)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        det.detect(x, sizes)
        times.append(time.perf_counter() - t)
    times.sort()
    threads = ort.SessionOptions().intra_op_num_threads or os.cpu_count()
    where = "NMS in the graph" if det.in_graph else "NMS in numpy"
    print(json.dumps({"runtime": f"ONNX Runtime {ort.__version__} (CPUExecutionProvider, {where})", "device": "cpu",
                      "threads": threads, "precision": "fp32", "batch": 1, "input": list(x.shape[-2:]),
                      "nms": True, "median_ms": 1000 * times[len(times) // 2], "reps": reps}))


def image_ids(gt, paths):
    with open(gt) as f:
        by_name = {os.path.basename(i["file_name"]): i["id"] for i in json.load(f)["images"]}
    missing = [p for p in paths if os.path.basename(p) not in by_name]
    if missing:
        raise SystemExit(f"{missing[0]}: no image named {os.path.basename(missing[0])} in {gt}")
    return [by_name[os.path.basename(p)] for p in paths]


def main():
    if sys.argv[1:] == ["check"]:
        return check()
    if sys.argv[1:2] == ["bench"] and len(sys.argv) in (2, 3, 5):
        return bench(int(sys.argv[2]) if len(sys.argv) >= 3 else 10,
                     (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) == 5 else None)
    from PIL import Image, ImageOps
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--gt")
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    det = Detector(threads=a.threads)
    ids = image_ids(a.gt, a.images) if a.gt else list(range(1, len(a.images) + 1))
    results = []
    for path, image_id in zip(a.images, ids):
        with Image.open(path) as im:
            im = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        boxes, scores, labels = det.predict([im])[0]
        for b, s, l in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            results.append({"image_id": image_id, "category_id": det.classes[l]["id"],
                            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    with open(a.out, "w") as f:
        json.dump(results, f)
    print(f"wrote {a.out}: {len(results)} detections on {len(a.images)} images")


if __name__ == "__main__":
    main()
