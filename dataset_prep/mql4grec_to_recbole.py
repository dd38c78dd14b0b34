"""Convert data as generative-recommendation repositories publish it into RecBole atomic files,
item views, semantic IDs and a ready dataset yaml.

Two layouts are read from ``--src`` (``<name>`` = the prefix of its one ``<name>.inter.json``):
  MQL4GRec / MACRec:  <name>.inter.json, <name>.item2id (``<raw id>\t<idx>`` lines), optional
                      <name>.user2id (MACRec publishes none: the json keys are then the user ids),
                      <name>.item.json, <name>.emb-*.npy, <name>.index_<suffix>.json
  LC-Rec / LETTER:    <name>.inter.json, <name>.item.json, <name>.index.json (no id maps: users and
                      items are the json keys, which must be integers)
  <name>.inter.json        {"user": [item, ...]}, each user's items oldest first
  <name>.item.json         {"item": {"title", "description", "brand", "categories"}}
  <name>.emb-*.npy         embedding matrices, row = item index
  <name>.index.json        semantic IDs {"item": ["<a_1>", "<b_2>", ...]} (view ``text``, or --view index=NAME)
  <name>.index_<sfx>.json  the same, view named by --view <sfx>=NAME or by the suffix
Output folder ``--out``; the dataset is named after it (RecBole reads <data_path>/<dataset>/):
  <dataset>.inter             user_id:token item_id:token timestamp:float (timestamp = position, so
                              RecBole's time order is the published order)
  <dataset>.item              when item text exists
  <dataset>.<view>.npz        one item view per embedding matrix
  <dataset>.<view>.codes.json published codes as {"item": [int, ...]} (for sid_method: import)
  <dataset>.yaml              data_path, load_col, sid_views, text fields, sid_method: what
                              `run_recbole.py --dataset=<dataset> --config_files=<out>/<dataset>.yaml` needs
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

import numpy as np
import pandas as pd

from recbole_macrec.data.atomic import write_atomic
from recbole_macrec.data.item_views import save_item_view
from recbole_macrec.files import move_into, temp_dir

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
            if not parts[1].isdigit():
                raise ConversionError(f"{path}:{line_no}: idx '{parts[1]}' is not a non-negative integer")
            if parts[1] in ids:
                raise ConversionError(f"{path}:{line_no}: duplicate idx '{parts[1]}'")
            ids[parts[1]] = parts[0]
    return ids


def find_name(src):
    found = sorted(glob.glob(os.path.join(src, "*.inter.json")))
    if len(found) != 1:
        raise ConversionError(f"{src}: expected exactly one <name>.inter.json, found {len(found)}")
    return os.path.basename(found[0])[: -len(".inter.json")]


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from err


def id_maps(src, name):
    """``(items, users)`` idx -> raw id from the id map files: both maps (MQL4GRec), the item map
    alone (MACRec: users are the json keys, ``users`` is None), or ``(None, None)`` (LC-Rec)."""
    item_path, user_path = (os.path.join(src, f"{name}.{kind}2id") for kind in ("item", "user"))
    if not os.path.isfile(item_path):
        if os.path.isfile(user_path):
            raise ConversionError(f"{user_path} exists but {item_path} does not: a user map needs the item "
                                  f"map (give {name}.item2id, or neither map)")
        return None, None
    return read_id_map(item_path), read_id_map(user_path) if os.path.isfile(user_path) else None


def integer_keys(keys, path, what):
    bad = next((k for k in keys if not str(k).isdigit()), None)
    if bad is not None:
        raise ConversionError(f"{path}: {what} '{bad}' is not an integer; without "
                              f"<name>.item2id / <name>.user2id the json keys must be integer indices")


def build_inter(src, name):
    """The interaction frame and the item catalogue (idx tokens, numeric order)."""
    inter_path = os.path.join(src, f"{name}.inter.json")
    sequences = read_json(inter_path)
    if not isinstance(sequences, dict):
        raise ConversionError(f"{inter_path}: expected an object {{user: [item, ...]}}")
    items, users = id_maps(src, name)
    if items is None:   # LC-Rec layout: the keys are the ids
        integer_keys(sequences, inter_path, "user")
        integer_keys((i for seq in sequences.values() for i in seq), inter_path, "item")
        items = {str(i): str(i) for seq in sequences.values() for i in seq}
    if users is None:   # LC-Rec, and MACRec's layout (an item map only): the json keys are the users
        users = {u: u for u in sequences}
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


TEXT_FIELDS = ["title", "description", "brand", "categories"]


def build_item(src, name, item_tokens):
    """The ``.item`` frame of the catalogue, or None without ``<name>.item.json``; also the number
    of item.json entries that are not in the catalogue (left out: they have no interaction)."""
    path = os.path.join(src, f"{name}.item.json")
    if not os.path.isfile(path):
        return None, 0
    meta = read_json(path)
    missing = [tok for tok in item_tokens if tok not in meta]
    if missing:
        raise ConversionError(f"{path}: item '{missing[0]}' of {name}.inter.json has no entry "
                              f"({len(missing)} missing)")
    rows = [[tok] + [_clean_text((meta[tok] or {}).get(k, "")) for k in TEXT_FIELDS] for tok in item_tokens]
    return pd.DataFrame(rows, columns=["item_id", *TEXT_FIELDS]), len(set(meta) - set(item_tokens))


def view_name(suffix, view_names):
    return view_names.get(suffix, suffix)


def code_files(src, name, view_names):
    """``[(path, view)]`` of the semantic-ID files: ``<name>.index.json`` (view ``text`` unless
    --view index=NAME) and ``<name>.index_<suffix>.json``."""
    found = []
    bare = os.path.join(src, f"{name}.index.json")
    if os.path.isfile(bare):
        found.append((bare, view_names.get("index", "text")))
    for path in sorted(glob.glob(os.path.join(src, f"{name}.index_*.json"))):
        suffix = os.path.basename(path)[len(name) + len(".index_"): -len(".json")]
        found.append((path, view_name(suffix, view_names)))
    views = [v for _, v in found]
    duplicate = next((v for v in views if views.count(v) > 1), None)
    if duplicate:
        raise ConversionError(f"{src}: two code files name view '{duplicate}': "
                              f"{[p for p, v in found if v == duplicate]} (name them with --view)")
    return found


def convert_codes(path, item_tokens):
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ConversionError(f"{path}: expected an object {{item: [code, ...]}}")
    missing = [tok for tok in item_tokens if tok not in raw]
    if missing:
        raise ConversionError(f"{path}: item '{missing[0]}' has no code ({len(missing)} missing)")
    extra = sorted(set(raw) - set(item_tokens), key=str)
    if extra:
        raise ConversionError(f"{path}: item '{extra[0]}' is not an item of the dataset ({len(extra)} "
                              f"such keys): is it another dataset's file?")
    codes, length = {}, None
    for tok in item_tokens:
        parsed = []
        for t in raw[tok] if isinstance(raw[tok], list) else [raw[tok]]:
            m = CODE_TOKEN.match(t) if isinstance(t, str) else None
            if not m:
                raise ConversionError(f"{path}: item '{tok}': code token {t!r} is not like '<a_12>'")
            parsed.append(int(m.group(2)))
        if length is None:
            length, first = len(parsed), tok
        elif len(parsed) != length:
            raise ConversionError(f"{path}: item '{tok}' has {len(parsed)} codes, item '{first}' has {length}")
        codes[tok] = parsed
    return codes


def trainable_views(item, views, code_views):
    """The views the pre-stage can train codes from, text first: every embedding view, ``text``
    from the item text, and ``collab`` (item factors from the training interactions, always)."""
    offered = sorted((v for v in views if v not in code_views), key=lambda v: (v != "text", v))
    if item is not None and "text" not in offered:
        offered.insert(0, "text")
    if "collab" not in offered:
        offered.append("collab")
    return offered


def run_commands(dataset, yaml_path, item, views, code_views):
    """``(sid_views, sid_method or None, command that runs as written, MACRec's command or None)``
    for the converted data: MACRec on two published views, else on two views it can train;
    TIGER (one view) when only one view exists."""
    base = f"python run_recbole.py --dataset={dataset} --config_files={yaml_path}"
    published = sorted(code_views, key=lambda v: (v != "text", v))
    trainable = trainable_views(item, views, code_views)
    macrec_trained = f'{base.replace("run_recbole.py", "run_recbole.py --model=MACRec")} --sid_method=macrec ' \
                     f'--sid_views="[{",".join(trainable[:2])}]"' if len(trainable) >= 2 else None
    if len(published) >= 2:
        command = base.replace("run_recbole.py", "run_recbole.py --model=MACRec")
        return published, "import", command, command
    if published:
        view = published[0]
        tiger = base.replace("run_recbole.py", "run_recbole.py --model=TIGER") \
            + ("" if view == "text" else f' --gr_views="[{view}]"')
        return published, "import", tiger, macrec_trained
    if macrec_trained:
        command = base.replace("run_recbole.py", "run_recbole.py --model=MACRec")
        return trainable[:2], None, command, command
    tiger = base.replace("run_recbole.py", "run_recbole.py --model=TIGER") + f' --gr_views="[{trainable[0]}]"'
    return trainable[:1], None, tiger, None


def dataset_yaml(dataset, out, item, views, code_views):
    """``(yaml text, the command that runs on it as written)``: everything a run on the converted
    data needs, and in a comment how MACRec runs on it (or why it cannot)."""
    item_cols = ["item_id", "title", "description", "brand", "categories"]
    yaml_path = os.path.join(out, dataset + ".yaml")
    sid_views, method, command, macrec = run_commands(dataset, yaml_path, item, views, code_views)
    lines = [f"# Written by dataset_prep/mql4grec_to_recbole.py. Run: {command}",
             f"data_path: {json.dumps(os.path.dirname(os.path.abspath(out)))}",
             "load_col:", "  inter: [user_id, item_id, timestamp]"]
    if item is not None:
        lines.append(f"  item: [{', '.join(item_cols)}]")
        lines.append("lcrec_text_fields: [title, description]   # LC-Rec's item <-> ID tasks")
        if "text" not in views:   # no text embedding: a text view would be computed from these fields
            lines.append("text_view_fields: [title, description]   # the computed text view "
                         "(text_encoder: a local model, else TF-IDF)")
    lines.append(f"sid_views: [{', '.join(sid_views)}]")
    if method == "import":
        lines.append("sid_method: import            # the published semantic IDs")
    if macrec is None:
        lines.append(f"# MACRec and MQL4GRec need codes for two item views: published codes cover "
                     f"{', '.join(code_views) or 'none'}, and codes can be trained from "
                     f"{', '.join(trainable_views(item, views, code_views))} only. Add item text (<name>.item.json) "
                     f"or an embedding (<name>.emb-*.npy) and convert again.")
    elif macrec != command:
        lines.append(f"# MACRec and MQL4GRec need two views; with codes trained from two item views: {macrec}")
    extra = [v for v in trainable_views(item, views, code_views) if v not in sid_views and method is None]
    if extra:
        lines.append(f"# more item views: {', '.join(extra)}")
    return "\n".join(lines) + "\n", command


def convert(src, out, view_names=None):
    """Convert ``src`` into ``out`` (the dataset is named after ``out``); returns a stats dict.
    Nothing is left in ``out`` on failure."""
    view_names = {**DEFAULT_VIEW_NAMES, **(view_names or {})}
    name = find_name(src)
    dataset = os.path.basename(os.path.normpath(str(out)))
    inter, item_tokens = build_inter(src, name)
    item, unused_meta = build_item(src, name, item_tokens)
    codes = [(view, convert_codes(path, item_tokens)) for path, view in code_files(src, name, view_names)]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = temp_dir(os.path.dirname(os.path.abspath(out)), dataset)
    views = []
    try:
        write_atomic(os.path.join(tmp, f"{dataset}.inter"), inter,
                     {"user_id": "token", "item_id": "token", "timestamp": "float"})
        if item is not None:
            write_atomic(os.path.join(tmp, f"{dataset}.item"), item,
                         {"item_id": "token", "title": "token_seq", "description": "token_seq",
                          "brand": "token", "categories": "token_seq"})
        for path in sorted(glob.glob(os.path.join(src, f"{name}.emb-*.npy"))):
            suffix = os.path.basename(path)[len(name) + len(".emb-"): -len(".npy")]
            emb = np.load(path)
            if emb.ndim != 2 or int(item_tokens[-1]) >= emb.shape[0]:
                raise ConversionError(f"{path}: shape {emb.shape}: needs a row per item index "
                                      f"(up to {item_tokens[-1]})")
            views.append(view_name(suffix, view_names))
            # Rows are indexed by item_idx; tokens are "0".."n-1" sorted numerically.
            save_item_view(os.path.join(tmp, f"{dataset}.{views[-1]}.npz"),
                           item_tokens, emb[[int(t) for t in item_tokens]])
        for view, table in codes:
            with open(os.path.join(tmp, f"{dataset}.{view}.codes.json"), "w") as f:
                json.dump(table, f)
        text, command = dataset_yaml(dataset, out, item, views, [v for v, _ in codes])
        with open(os.path.join(tmp, f"{dataset}.yaml"), "w") as f:
            f.write(text)
        move_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_users, n_items, n_inter = inter.user_id.nunique(), len(item_tokens), len(inter)
    return {"dataset": dataset, "users": n_users, "items": n_items, "interactions": n_inter,
            "density": n_inter / (n_users * n_items), "item_json_entries_without_interactions": unused_meta,
            "yaml": os.path.join(str(out), f"{dataset}.yaml"), "files": sorted(os.listdir(out)),
            "next": command}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--src", required=True, help="folder with <name>.inter.json etc.")
    parser.add_argument("--out", required=True, help="output folder, named after the dataset, e.g. dataset/Instruments")
    parser.add_argument("--view", action="append", default=[], metavar="SUFFIX=VIEW",
                        help="name the view of an emb-/index_ file suffix, e.g. lemb=text (index=NAME: the bare index.json)")
    args = parser.parse_args(argv)
    bad = next((v for v in args.view if "=" not in v or not v.split("=", 1)[0] or not v.split("=", 1)[1]), None)
    if bad is not None:
        parser.error(f"--view {bad!r}: expected SUFFIX=VIEW, e.g. --view lemb=text")
    view_names = dict(v.split("=", 1) for v in args.view)
    try:
        stats = convert(args.src, args.out, view_names)
    except (ConversionError, OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(json.dumps(stats, indent=2))
    print(f"next: {stats['next']}")


if __name__ == "__main__":
    main()
