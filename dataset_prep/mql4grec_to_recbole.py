"""Convert data as MQL4GRec / MACRec publish it into RecBole atomic files plus item views.

Input folder ``--src`` (``<name>`` = the prefix of ``<name>.inter.json``):
  <name>.inter.json        {"user_idx": [item_idx, ...]}, each user's items oldest first
  <name>.item2id/.user2id  "<raw id>\\t<idx>" lines
  <name>.item.json         optional {"item_idx": {"title", "description", "brand", "categories"}}
  <name>.emb-*.npy         optional embedding matrices, row = item_idx
  <name>.index_*.json      optional published semantic IDs {"item_idx": ["<a_1>", "<b_2>", ...]}
Output folder ``--out``:
  <name>.inter             user_id:token item_id:token timestamp:float (timestamp = position, so
                           RecBole's time order is the published order)
  <name>.item              when item text exists
  <name>.<view>.npz        one item view per embedding matrix
  <name>.<view>.codes.json published codes as {"item_idx": [int, ...]} (for --method=import)
Everything is written to a temporary folder first and moved into place only when all succeeded.

    python dataset_prep/mql4grec_to_recbole.py --src=../shared/data/Instruments --out=dataset/Instruments
"""
import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_macrec.data.atomic import write_atomic  # noqa: E402
from recbole_macrec.data.item_views import save_item_view  # noqa: E402

# Published file suffixes -> view names (MQL4GRec: LLaMA text embeddings, CLIP ViT image embeddings).
DEFAULT_VIEW_NAMES = {"lemb": "text", "vitemb": "image", "llama-td": "text", "ViT-L-14": "image"}
MIN_INTERACTIONS = 3  # leave-one-out needs a training item, a valid item and a test item
CODE_TOKEN = re.compile(r"^<([A-Za-z]+)_(\d+)>$")


class ConversionError(ValueError):
    pass


def read_id_map(path):
    ids = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2:
                raise ConversionError(f"{path}:{line_no}: expected '<raw id>\\t<idx>'")
            if parts[1] in ids:
                raise ConversionError(f"{path}:{line_no}: duplicate idx '{parts[1]}'")
            ids[parts[1]] = parts[0]
    return ids


def find_name(src):
    found = sorted(glob.glob(os.path.join(src, "*.inter.json")))
    if len(found) != 1:
        raise ConversionError(f"{src}: expected exactly one <name>.inter.json, found {len(found)}")
    return os.path.basename(found[0])[: -len(".inter.json")]


def build_inter(src, name):
    inter_path = os.path.join(src, f"{name}.inter.json")
    with open(inter_path, encoding="utf-8") as f:
        sequences = json.load(f)
    items = read_id_map(os.path.join(src, f"{name}.item2id"))
    users = read_id_map(os.path.join(src, f"{name}.user2id"))
    rows = []
    for user, seq in sequences.items():
        if user not in users:
            raise ConversionError(f"{inter_path}: user '{user}' is not in {name}.user2id")
        if len(seq) < MIN_INTERACTIONS:
            raise ConversionError(f"{inter_path}: user '{user}' has {len(seq)} interactions, "
                                  f"leave-one-out needs at least {MIN_INTERACTIONS}")
        for pos, item in enumerate(seq):
            if str(item) not in items:
                raise ConversionError(f"{inter_path}: item '{item}' of user '{user}' is not in "
                                      f"{name}.item2id")
            rows.append((user, str(item), float(pos)))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return frame, sorted(items, key=int)


def _clean_text(value):
    if isinstance(value, list):
        value = " ".join(map(str, value))
    return re.sub(r"[\t\r\n]+", " ", str(value or "")).strip()


def build_item(src, name, item_tokens):
    path = os.path.join(src, f"{name}.item.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    fields = ["title", "description", "brand", "categories"]
    rows = [[tok] + [_clean_text(meta.get(tok, {}).get(k, "")) for k in fields] for tok in item_tokens]
    return pd.DataFrame(rows, columns=["item_id", *fields])


def view_name(suffix, view_names):
    return view_names.get(suffix, suffix)


def convert_codes(path, item_tokens):
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    missing = [tok for tok in item_tokens if tok not in raw]
    if missing:
        raise ConversionError(f"{path}: item '{missing[0]}' has no code ({len(missing)} missing)")
    codes = {}
    for tok in item_tokens:
        parsed = []
        for t in raw[tok]:
            m = CODE_TOKEN.match(t)
            if not m:
                raise ConversionError(f"{path}: item '{tok}': code token '{t}' is not like '<a_12>'")
            parsed.append(int(m.group(2)))
        codes[tok] = parsed
    return codes


def convert(src, out, view_names=None):
    """Convert ``src`` into ``out``; returns a stats dict. Nothing is left in ``out`` on failure."""
    view_names = {**DEFAULT_VIEW_NAMES, **(view_names or {})}
    name = find_name(src)
    inter, item_tokens = build_inter(src, name)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.dirname(os.path.abspath(out)))
    try:
        write_atomic(os.path.join(tmp, f"{name}.inter"), inter,
                     {"user_id": "token", "item_id": "token", "timestamp": "float"})
        item = build_item(src, name, item_tokens)
        if item is not None:
            write_atomic(os.path.join(tmp, f"{name}.item"), item,
                         {"item_id": "token", "title": "token_seq", "description": "token_seq",
                          "brand": "token", "categories": "token_seq"})
        for path in sorted(glob.glob(os.path.join(src, f"{name}.emb-*.npy"))):
            suffix = os.path.basename(path)[len(name) + len(".emb-"): -len(".npy")]
            emb = np.load(path)
            if emb.shape[0] != len(item_tokens):
                raise ConversionError(f"{path}: {emb.shape[0]} rows for {len(item_tokens)} items")
            # Rows are indexed by item_idx; tokens are "0".."n-1" sorted numerically.
            save_item_view(os.path.join(tmp, f"{name}.{view_name(suffix, view_names)}.npz"),
                           item_tokens, emb[[int(t) for t in item_tokens]])
        for path in sorted(glob.glob(os.path.join(src, f"{name}.index_*.json"))):
            suffix = os.path.basename(path)[len(name) + len(".index_"): -len(".json")]
            codes = convert_codes(path, item_tokens)
            with open(os.path.join(tmp, f"{name}.{view_name(suffix, view_names)}.codes.json"), "w") as f:
                json.dump(codes, f)
        os.makedirs(out, exist_ok=True)
        for fname in os.listdir(tmp):
            os.replace(os.path.join(tmp, fname), os.path.join(out, fname))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_users, n_items, n_inter = inter.user_id.nunique(), len(item_tokens), len(inter)
    return {"dataset": name, "users": n_users, "items": n_items, "interactions": n_inter,
            "density": n_inter / (n_users * n_items), "files": sorted(os.listdir(out))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--src", required=True, help="folder with <name>.inter.json etc.")
    parser.add_argument("--out", required=True, help="output folder, e.g. dataset/Instruments")
    parser.add_argument("--view", action="append", default=[], metavar="SUFFIX=VIEW",
                        help="name the view of an emb-/index_ file suffix, e.g. lemb=text")
    args = parser.parse_args(argv)
    view_names = dict(v.split("=", 1) for v in args.view)
    try:
        stats = convert(args.src, args.out, view_names)
    except (ConversionError, OSError) as err:
        sys.exit(f"error: {err}")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
