"""Detections of the exported detector on image files, as COCO results, with PyTorch
(`model.py` beside this file; needs torch and Pillow).

    python predict_torch.py IMAGE... --out detections.json [--gt GT.json] [--threads N]

Each result is {image_id, category_id, bbox [x, y, w, h] in the image's pixels, score}. With
--gt (COCO instances), image ids are those of its images of the same file name, so
`detnas eval coco --gt GT.json --dt detections.json` (or pycocotools) scores them; without,
the images are numbered 1.. in the order given. Images are read as detnas reads them (EXIF
orientation applied, RGB) and run one at a time.
"""
import argparse
import json
import os
import sys

import torch
from PIL import Image, ImageOps

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model  # noqa: E402


def image_ids(gt, paths):
    with open(gt) as f:
        by_name = {os.path.basename(i["file_name"]): i["id"] for i in json.load(f)["images"]}
    missing = [p for p in paths if os.path.basename(p) not in by_name]
    if missing:
        raise SystemExit(f"{missing[0]}: no image named {os.path.basename(missing[0])} in {gt}")
    return [by_name[os.path.basename(p)] for p in paths]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--gt")
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    det = model.load(os.path.dirname(os.path.abspath(__file__)))
    ids = image_ids(a.gt, a.images) if a.gt else list(range(1, len(a.images) + 1))
    results = []
    for path, image_id in zip(a.images, ids):
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            boxes, scores, labels = det.predict([im])[0]
        for b, s, l in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            results.append({"image_id": image_id, "category_id": det.classes[l]["id"],
                            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    with open(a.out, "w") as f:
        json.dump(results, f)
    print(f"wrote {a.out}: {len(results)} detections on {len(a.images)} images")


if __name__ == "__main__":
    main()
