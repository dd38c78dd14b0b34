"""Raw Amazon Review Data 2018 -> RecBole atomic files + text and image item views.

The MQL4GRec / MACRec recipe: keep items that have metadata and an image, drop repeated
user-item pairs, iterative 5-core on users and items, order each user's items by time.

    python dataset_prep/amazon2018.py --category=Instruments --raw-dir=raw/ --out=dataset/Instruments \\
        [--download-images | --images-dir=DIR] [--text-encoder=LOCAL_PATH] [--image-encoder=LOCAL_PATH]

Inputs in ``--raw-dir``: ``<Category>.csv`` (ratings: ``item,user,rating,timestamp``, no header)
and ``meta_<Category>.json.gz`` (one json object per line: asin, title, description, brand,
category, imageURLHighRes). Short names: Instruments, Arts, Games. Images: ``<images dir>/<asin>.jpg``
(``--download-images`` fetches the first ``imageURLHighRes`` of each item into
``<out>/images/``, with retries and resume). Encoders are loaded from local folders only
(``from_pretrained(path)``): text = mean-pooled last hidden state of the title and of the
description, averaged; image = the CLIP vision tower's image embedding. Embeddings are cached
per item (``<out>/.<view>.cache.npz``) so a rerun resumes. Everything is reported in
``<out>/prep_report.json``.
"""
import argparse
import ast
import csv
import gzip
import io
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd

from recbole_macrec.data.atomic import write_atomic
from recbole_macrec.data.item_views import save_item_view
from recbole_macrec.files import atomic_path, move_into, temp_dir

SAFE_ASIN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")   # an ASIN becomes a file name: nothing else may
IMAGE_SCHEMES = ("http://", "https://")          # file:// and others would read local files
MAX_IMAGE_BYTES = 20 * 2 ** 20

CATEGORIES = {"Instruments": "Musical_Instruments", "Arts": "Arts_Crafts_and_Sewing", "Games": "Video_Games"}


class PrepError(ValueError):
    pass


def category_name(name):
    return CATEGORIES.get(name, name)


def read_ratings(path):
    """Ratings as a frame (item, user, rating, timestamp) and the number of malformed lines."""
    if not os.path.isfile(path):
        raise PrepError(f"ratings file not found: {path}")
    rows, bad = [], 0
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            try:
                item, user, rating, ts = row
                rows.append((item, user, float(rating), int(float(ts))))
            except ValueError:
                bad += 1
    if not rows:
        raise PrepError(f"{path}: no valid rating line")
    return pd.DataFrame(rows, columns=["item", "user", "rating", "timestamp"]), bad


def _text(value):
    if isinstance(value, list):
        value = " ".join(map(str, value))
    return " ".join(str(value or "").split())


def read_meta(path):
    """``{asin: {title, description, brand, categories, image_url}}`` and counts of malformed
    lines and duplicate ASINs (the first record of an ASIN is kept)."""
    if not os.path.isfile(path):
        raise PrepError(f"metadata file not found: {path}")
    meta, counts = {}, {"malformed_meta_lines": 0, "duplicate_asins": 0, "meta_without_asin": 0,
                        "unsafe_asins": 0}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                try:  # some Amazon dumps are Python literals
                    record = ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    counts["malformed_meta_lines"] += 1
                    continue
            if not isinstance(record, dict) or not record.get("asin"):
                counts["meta_without_asin"] += 1
                continue
            asin = record["asin"]
            if not isinstance(asin, str) or not SAFE_ASIN.match(asin):
                counts["unsafe_asins"] += 1   # it would name a file outside the image folder
                continue
            if asin in meta:
                counts["duplicate_asins"] += 1
                continue
            images = record.get("imageURLHighRes") or record.get("imageURL") or []
            meta[asin] = {"title": _text(record.get("title")), "description": _text(record.get("description")),
                          "brand": _text(record.get("brand")), "categories": _text(record.get("category")),
                          "image_url": images[0] if images else ""}
    return meta, counts


def k_core(frame, k):
    """Iteratively drop users and items with fewer than ``k`` interactions."""
    while True:
        users = frame.user.map(frame.user.value_counts())
        items = frame.item.map(frame.item.value_counts())
        keep = (users >= k) & (items >= k)
        if keep.all():
            return frame
        frame = frame[keep]


def valid_image(path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # PIL raises many types for corrupt files
        return False


def download_images(urls, folder, retries=3, timeout=20, backoff=1.0, progress=True):
    """Fetch ``{asin: url}`` into ``folder/<asin>.jpg``; valid files already there are skipped
    (resume). Only http(s) URLs, at most ``MAX_IMAGE_BYTES`` each, and ASINs that are plain file
    names. Returns ``{"downloaded": n, "skipped": n, "failed": {asin: reason}}``."""
    from tqdm import tqdm

    os.makedirs(folder, exist_ok=True)
    report = {"downloaded": 0, "skipped": 0, "failed": {}}
    for asin, url in tqdm(sorted(urls.items()), desc="images", disable=not progress, ncols=100):
        if not SAFE_ASIN.match(str(asin)):
            report["failed"][str(asin)] = "not a plain file name"
            continue
        path = os.path.join(folder, f"{asin}.jpg")
        if os.path.isfile(path) and valid_image(path):
            report["skipped"] += 1
            continue
        reason = "no url"
        if url and not str(url).lower().startswith(IMAGE_SCHEMES):
            report["failed"][asin] = f"url scheme not allowed (http/https only): {str(url)[:40]}"
            continue
        for attempt in range(retries if url else 0):
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    data = response.read(MAX_IMAGE_BYTES + 1)
                if len(data) > MAX_IMAGE_BYTES:
                    reason = f"larger than {MAX_IMAGE_BYTES // 2 ** 20} MB"
                    break
                if not valid_image(io.BytesIO(data)):
                    reason = "not a readable image"
                    break  # a corrupt file does not heal by retrying
                with atomic_path(path, suffix=".jpg") as tmp, open(tmp, "wb") as f:
                    f.write(data)
                report["downloaded"] += 1
                reason = None
                break
            except urllib.error.HTTPError as err:
                reason = f"HTTP {err.code}"
                if err.code < 500:
                    break
            except (urllib.error.URLError, TimeoutError, OSError) as err:
                reason = f"{type(err).__name__}: {err}"
            time.sleep(backoff * attempt)
        if reason:
            report["failed"][asin] = reason
    return report


def filter_interactions(ratings, meta, k=5, has_image=None):
    """The recipe's filters; ``has_image(asin)`` (default: a metadata image URL) decides images."""
    has_image = has_image or (lambda asin: bool(meta[asin]["image_url"]))
    stats = {"ratings": len(ratings)}
    frame = ratings[ratings.item.isin(set(meta))]
    stats["with_metadata"] = len(frame)
    frame = frame[frame.item.map(has_image)]
    stats["with_image"] = len(frame)
    frame = frame.sort_values(["user", "timestamp"], kind="stable").drop_duplicates(["user", "item"], keep="first")
    stats["after_dedup"] = len(frame)
    frame = k_core(frame, k)
    stats["after_k_core"] = len(frame)
    return frame, stats


def write_dataset(frame, meta, out, name):
    frame = frame.sort_values(["user", "timestamp"], kind="stable")
    inter = pd.DataFrame({"user_id": frame.user, "item_id": frame.item, "timestamp": frame.timestamp.astype(float)})
    items = sorted(frame.item.unique())
    item = pd.DataFrame([[a] + [meta[a][k] for k in ("title", "description", "brand", "categories")]
                         for a in items], columns=["item_id", "title", "description", "brand", "categories"])
    write_atomic(os.path.join(out, f"{name}.inter"), inter, {"user_id": "token", "item_id": "token", "timestamp": "float"})
    write_atomic(os.path.join(out, f"{name}.item"), item, {"item_id": "token", "title": "token_seq",
                 "description": "token_seq", "brand": "token", "categories": "token_seq"})
    n_users, n_items = inter.user_id.nunique(), len(items)
    return {"users": n_users, "items": n_items, "interactions": len(inter),
            "density": len(inter) / (n_users * n_items)}


class EmbeddingCache:
    """Per-item embeddings saved after every batch, so an interrupted run resumes."""

    def __init__(self, path):
        self.path, self.rows = path, {}
        if os.path.isfile(path):
            with np.load(path) as data:
                self.rows = dict(zip(data["item_ids"].tolist(), data["emb"]))

    def todo(self, items):
        return [i for i in items if i not in self.rows]

    def add(self, items, emb):
        self.rows.update(zip(items, np.asarray(emb, dtype=np.float32)))
        with atomic_path(self.path, suffix=".npz") as tmp:
            np.savez(tmp, item_ids=np.asarray(list(self.rows)), emb=np.stack(list(self.rows.values())))

    def matrix(self, items):
        return np.stack([self.rows[i] for i in items])


def embed_with_cache(items, cache_path, encode, batch_size, desc, progress=True):
    """``[n, d]`` rows of ``items``; only items missing from the cache go through
    ``encode(batch) -> [b, d]``, and the cache is saved after every batch."""
    from tqdm import tqdm

    cache = EmbeddingCache(cache_path)
    todo = cache.todo(items)
    for start in tqdm(range(0, len(todo), batch_size), desc=desc, disable=not progress, ncols=100):
        batch = todo[start:start + batch_size]
        cache.add(batch, encode(batch))
    return cache.matrix(items)


def embed_texts(items, meta, encoder_path, cache_path, device="cpu", batch_size=32, max_length=256,
                fields=("title", "description"), progress=True, sha256=None):
    """``[n, d]``: per field the mean-pooled last hidden state (padding excluded), then the mean
    over fields (the official recipe; the same encoder code as the computed text view)."""
    from recbole_macrec.data.text_encoder import TextEncoder

    encoder = TextEncoder(encoder_path, device, sha256, max_length)

    def encode(batch):
        return encoder.embed([[meta[a][field] or meta[a]["title"] for field in fields] for a in batch])

    return embed_with_cache(items, cache_path, encode, batch_size, "text", progress)


def embed_images(items, image_paths, encoder_path, cache_path, device="cpu", batch_size=32, progress=True):
    """``[n, d]`` CLIP image embeddings (the vision tower's projected output)."""
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    # not AutoImageProcessor: in transformers 5.17 it demands torchvision, while CLIPImageProcessor
    # falls back to its PIL implementation
    processor = CLIPImageProcessor.from_pretrained(encoder_path, local_files_only=True)
    model = CLIPVisionModelWithProjection.from_pretrained(encoder_path, local_files_only=True).to(device).eval()

    def encode(batch):
        images = [Image.open(image_paths[a]).convert("RGB") for a in batch]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        with torch.no_grad():
            return model(pixel_values=pixels).image_embeds.float().cpu().numpy()

    return embed_with_cache(items, cache_path, encode, batch_size, "image", progress)


def prepare(category, raw_dir, out, images_dir=None, download=False, text_encoder=None, image_encoder=None,
            device="cpu", batch_size=32, k=5, progress=True):
    """Run the whole recipe; returns the report (also written to ``<out>/prep_report.json``)."""
    full = category_name(category)
    name = category if category in CATEGORIES else full
    ratings, bad_ratings = read_ratings(os.path.join(raw_dir, f"{full}.csv"))
    meta, meta_counts = read_meta(os.path.join(raw_dir, f"meta_{full}.json.gz"))
    report = {"category": full, "dataset": name, "malformed_rating_lines": bad_ratings, **meta_counts}
    frame, report["filter"] = filter_interactions(ratings, meta, k)
    os.makedirs(out, exist_ok=True)
    images_dir = os.path.join(out, "images") if download else images_dir
    if download:
        report["download"] = download_images({a: meta[a]["image_url"] for a in frame.item.unique()},
                                             images_dir, progress=progress)
    image_paths = {}
    if images_dir:
        # drop items whose image is missing or corrupt, then restore the k-core
        dropped = {}
        while True:
            for asin in set(frame.item.unique()) - set(image_paths) - set(dropped):
                path = os.path.join(images_dir, f"{asin}.jpg")
                if valid_image(path):
                    image_paths[asin] = path
                else:
                    dropped[asin] = "missing" if not os.path.isfile(path) else "unreadable"
            kept = frame[frame.item.isin(set(image_paths))]
            cored = k_core(kept, k)
            if len(cored) == len(frame):
                break
            frame = cored
        report["items_dropped_for_images"] = {"count": len(dropped), "missing": sum(v == "missing" for v in dropped.values()),
                                              "unreadable": sum(v == "unreadable" for v in dropped.values())}
    if frame.empty:
        raise PrepError(f"no interactions left after filtering {full} (see the counts: {report})")
    tmp = temp_dir(os.path.dirname(os.path.abspath(out)) or ".", name)
    try:
        report["stats"] = write_dataset(frame, meta, tmp, name)
        move_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    items = sorted(frame.item.unique())
    if text_encoder:
        emb = embed_texts(items, meta, text_encoder, os.path.join(out, ".text.cache.npz"), device, batch_size,
                          progress=progress)
        save_item_view(os.path.join(out, f"{name}.text.npz"), items, emb)
        report["text_view"] = list(emb.shape)
    if image_encoder:
        if not image_paths:
            raise PrepError("--image-encoder needs images: --download-images or --images-dir")
        emb = embed_images(items, image_paths, image_encoder, os.path.join(out, ".image.cache.npz"), device,
                           batch_size, progress=progress)
        save_item_view(os.path.join(out, f"{name}.image.npz"), items, emb)
        report["image_view"] = list(emb.shape)
    with open(os.path.join(out, "prep_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--category", required=True, help="Instruments, Arts, Games or an Amazon category name")
    parser.add_argument("--raw-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--download-images", action="store_true")
    parser.add_argument("--images-dir", default=None)
    parser.add_argument("--text-encoder", default=None, help="local folder of a transformers text encoder")
    parser.add_argument("--image-encoder", default=None, help="local folder of a CLIP vision model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--k", type=int, default=5, help="k-core threshold")
    args = parser.parse_args(argv)
    try:
        report = prepare(args.category, args.raw_dir, args.out, args.images_dir, args.download_images,
                         args.text_encoder, args.image_encoder, args.device, args.batch_size, args.k)
    except PrepError as err:
        sys.exit(f"error: {err}")
    stats = report["stats"]
    print(f"{report['dataset']}: {stats['users']} users, {stats['items']} items, {stats['interactions']} "
          f"interactions, density {stats['density']:.6f}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
