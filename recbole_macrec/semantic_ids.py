"""The semantic-ID pre-stage: item views -> codes -> a RecBole dataset with ``<view>_sid`` features.

    python -m recbole_macrec.semantic_ids --dataset=ml-100k --method=macrec [--config_files=...]

Output: ``<work dir>/sid-<method>-<settings hash>/`` holding a copy of the dataset's ``.inter`` (and ``.user``),
a ``.item`` file with the original columns (cells unchanged) plus one ``<view>_sid:float_seq``
column per view, and ``sid_report.json``. The user's own files are never modified. The report's
``input_hash`` (inputs + settings) decides whether a cached result can be reused.
"""
import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from logging import getLogger

import numpy as np
import pandas as pd

from recbole_macrec.code_metrics import CODES_BEFORE, save_codes_before
from recbole_macrec.data.atomic import atomic_file, interactions_without_item_row, read_atomic, sid_field, write_atomic
from recbole_macrec.data.default_views import catalogue_and_train_pairs, data_digest, ensure_item_views
from recbole_macrec.data.item_views import item_view_path, work_dir
from recbole_macrec.errors import DataError, require_items
from recbole_macrec.files import file_digest, remove_stale_temps, temp_dir, text_digest
from recbole_macrec.quantization.collisions import (
    add_extra_level, codebook_stats, colliding_groups, collision_rate, cyclic_distances,
    resolve_collisions, sinkhorn_reassign)
from recbole_macrec.quantization.train import METHODS, QuantizerParams, train_quantizers

REPORT = "sid_report.json"
COPIED_SUFFIXES = ("inter", "user")


class SemanticIdError(DataError):
    pass


def settings_key(config, method, views, params):
    """Everything besides the input files that determines the codes: the method, views, seed,
    pre-stage settings, the settings of the views the project computes (another text encoder is
    another setting, with a folder of its own) and the data RecBole makes from the files under the
    config's filters (``data_digest``: catalogue and training pairs)."""
    view_settings = {} if method == "import" else {key: config[key] for key in VIEW_SETTINGS}
    return json.dumps({"method": method, "views": list(views), "seed": config["seed"],
                       "params": params.__dict__, "views_from": view_settings, "data": data_digest(config)},
                      sort_keys=True, default=list)


VIEW_SETTINGS = ("text_encoder", "text_view_fields", "view_dim")


# RecBole settings that shape the catalogue and the training pairs (recorded in the report; the
# cache key covers their effect through the data digest)
DATA_SETTINGS = ("load_col", "unload_col", "unused_col", "rm_dup_inter", "val_interval", "filter_inter_by_user_or_item",
                 "user_inter_num_interval", "item_inter_num_interval", "eval_args", "MAX_ITEM_LIST_LENGTH")


def data_settings(config):
    return {key: config[key] for key in DATA_SETTINGS}


def output_dir(config, method, key):
    """``sid-<method>-<8 hex>`` of :func:`settings_key` ``key``: one folder per setting, so
    ablations keep their own cache."""
    return os.path.join(work_dir(config), f"sid-{method}-{text_digest(key, 8)}")


def codes_file(config, view):
    """Published codes for ``--method=import`` (written by dataset_prep/mql4grec_to_recbole.py)."""
    return os.path.join(config["data_path"], f"{config['dataset']}.{view}.codes.json")


def input_files(config, method, views):
    files = [atomic_file(config["data_path"], config["dataset"], s) for s in ("inter", "item", "user")]
    files = [f for f in files if os.path.isfile(f)]
    if method == "import":
        files += [codes_file(config, v) for v in views]
    else:
        files += [item_view_path(config, v) for v in views]
    return files


def load_imported_codes(config, view, items):
    """Published codes of ``view`` as ``[N, L]`` in catalogue order; checks they fit the dataset."""
    path = codes_file(config, view)
    if not os.path.isfile(path):
        raise SemanticIdError(f"view '{view}': codes file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as err:
        raise SemanticIdError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise SemanticIdError(f"{path}: expected an object {{item: [code, ...]}}")
    require_items(items, raw, path, SemanticIdError, f"'{config['dataset']}' has no code",
                  ": is it another dataset's file?")
    extra = set(raw) - set(items)
    if extra:   # items RecBole's filters left out are fine; items the data never had are not
        inter, _ = read_atomic(atomic_file(config["data_path"], config["dataset"], "inter"))
        foreign = extra - set(inter[config["ITEM_ID_FIELD"]])
        if foreign:
            raise SemanticIdError(f"{path}: {len(foreign)} items are not in dataset '{config['dataset']}' "
                                  f"(e.g. '{sorted(foreign)[0]}'): is it another dataset's file?")
        getLogger().info(f"{path}: {len(extra)} items with codes were left out by RecBole's filters")
    lengths = {len(raw[t]) for t in items}
    if len(lengths) != 1:
        first = len(raw[items[0]])
        odd = next(t for t in items if len(raw[t]) != first)
        raise SemanticIdError(f"{path}: code lengths differ between items: item '{items[0]}' has "
                              f"{first} codes, item '{odd}' has {len(raw[odd])}")
    malformed = next((t for t in items if not isinstance(raw[t], list)
                      or not all(isinstance(c, int) and not isinstance(c, bool) for c in raw[t])), None)
    if malformed is not None:
        raise SemanticIdError(f"{path}: item '{malformed}': codes must be a list of integers, got {raw[malformed]!r}")
    codes = np.asarray([raw[t] for t in items], dtype=np.int64)
    size = int(config["sid_codebook_size"])
    bad = np.argwhere((codes < 0) | (codes >= size))
    if len(bad):
        row, level = bad[0]
        raise SemanticIdError(f"{path}: item '{items[row]}' has code {codes[row, level]} at level {level}, "
                              f"outside the codebook 0..{size - 1} (sid_codebook_size={size})")
    return codes


def resolve(codes, params, view_codes=None):
    """Unique codes per the configured strategy; returns ``(codes, moved_rows, how)``."""
    if params.collision == "extra_level":
        out = add_extra_level(codes)
        return out, [int(r) for r in np.flatnonzero(out[:, -1] > 0)], "extra disambiguation level"
    m = max(params.codebook_size, int(codes.max()) + 1)
    if view_codes is None:
        last = cyclic_distances(codes, -1, m)
        prev = cyclic_distances(codes, -2, m) if codes.shape[1] > 1 else None
        how = ("no embeddings: in each colliding group the first item (catalogue order) keeps its "
               "code, the others take the next free last-level code upwards (mod M)")
        if params.collision == "sinkhorn":
            how = "sid_collision 'sinkhorn' needs trained codes; " + how
    else:
        last, prev = view_codes.last_distances, view_codes.prev_distances
        how = ("distance-based: the item nearest its last-level codeword keeps it, the others take "
               "their next-nearest free last-level codeword")
        if params.collision == "sinkhorn":
            codes, by_sinkhorn = sinkhorn_reassign(codes, last, params.sinkhorn_epsilon,
                                                   params.sinkhorn_iters, params.collision_sinkhorn_rounds)
            left = len(colliding_groups(codes))
            out, moved = resolve_collisions(codes, last, prev)
            how = (f"LC-Rec: Sinkhorn over each colliding group's last level (up to "
                   f"{params.collision_sinkhorn_rounds} rounds), then distance-based for the "
                   f"{left} groups it could not separate")
            return out, sorted(set(by_sinkhorn) | set(moved)), how
    out, moved = resolve_collisions(codes, last, prev)
    return out, moved, how


def view_report(view, before, after, moved, how, params, extra=None):
    m = max(params.codebook_size, int(after.max()) + 1)
    return {"view": view, "levels": int(after.shape[1]), "collision_rate_before": collision_rate(before),
            "collision_rate_after": collision_rate(after), "items_moved": len(moved),
            "resolution": how, "codebook_before": codebook_stats(before, m), **(extra or {})}


def compute_codes(config, method, views, items, params, device, show_progress, loaded=None):
    """Per-view resolved codes ``{view: [N, L]}``, the per-view report entries and the codes before
    resolution ``{view: [N, L]}`` (``loaded``: the item views, ``{view: (items, emb)}``, for the
    training methods)."""
    logger = getLogger()
    if method == "import":
        raw = {v: (load_imported_codes(config, v, items), None) for v in views}
    else:
        matrices = {}
        for v in views:
            view_items, emb = loaded[v]
            row = {t: i for i, t in enumerate(view_items)}
            require_items(items, row, item_view_path(config, v), SemanticIdError)
            matrices[v] = emb[[row[t] for t in items]]
        trained = train_quantizers(matrices, method, params, config["seed"], device, show_progress)
        raw = {v: (trained[v].codes, trained[v]) for v in views}
    codes, reports, unresolved = {}, [], {}
    for v, (before, view_codes) in raw.items():
        unresolved[v] = before
        after, moved, how = resolve(before, params, view_codes)
        extra = {"best_epoch": view_codes.epoch, "history": view_codes.history} if view_codes else {}
        reports.append(view_report(v, before, after, moved, how, params, extra))
        logger.info(f"semantic IDs '{v}': collision rate {reports[-1]['collision_rate_before']:.4f} "
                    f"-> {reports[-1]['collision_rate_after']:.4f} ({len(moved)} items moved)")
        codes[v] = after
    return codes, reports, unresolved


def item_table(config, items, codes):
    """The derived ``.item`` frame: original columns (catalogue rows) plus ``<view>_sid``."""
    logger = getLogger()
    iid = config["ITEM_ID_FIELD"]
    path = atomic_file(config["data_path"], config["dataset"], "item")
    if os.path.isfile(path):
        frame, types = read_atomic(path)
        if iid not in frame.columns:
            raise SemanticIdError(f"{path}: no '{iid}' column")
        for v in codes:
            if sid_field(v) in frame.columns:
                raise SemanticIdError(f"{path}: already has a column '{sid_field(v)}'; rename it "
                                      f"(the pre-stage never overwrites a user's column)")
        extra_rows = ~frame[iid].isin(set(items))
        if extra_rows.any():
            logger.warning(f"{path}: {int(extra_rows.sum())} items are not in the interactions and "
                           f"are left out of the derived .item (they would become ranking candidates)")
        frame = frame[~extra_rows].drop_duplicates(iid).set_index(iid).reindex(items, fill_value="")
        frame = frame.reset_index().rename(columns={"index": iid})
    else:
        frame, types = pd.DataFrame({iid: items}), {iid: "token"}
    for v, table in codes.items():
        frame[sid_field(v)] = [" ".join(map(str, row)) for row in table]
        types[sid_field(v)] = "float_seq"
    return frame, types


def _publish(tmp, out):
    """Swap a finished temp folder into place; an older result is replaced only at the end. When
    another run publishes the same folder at the same moment, the first one in stays (both were
    built with the same settings, which the folder name hashes; the report's ``input_hash`` says
    which input files they read)."""
    backup = None
    if os.path.isdir(out):
        backup = temp_dir(os.path.dirname(os.path.abspath(out)), os.path.basename(out) + ".old")
        os.rmdir(backup)
        os.replace(out, backup)
    try:
        os.replace(tmp, out)
    except OSError:
        if not os.path.isfile(os.path.join(out, REPORT)):
            raise
    if backup:
        shutil.rmtree(backup, ignore_errors=True)


def check_settings(config, method=None):
    """``(method, views, QuantizerParams)`` of the pre-stage ``config`` asks for; a clear error,
    naming the setting, for any it cannot use (the runner calls it before any work)."""
    method = method or config["sid_method"]
    if method not in METHODS:
        raise SemanticIdError(f"unknown sid_method '{method}' (expected one of {', '.join(METHODS)})")
    views = list(config["sid_views"] or [])
    if not views:
        raise SemanticIdError("sid_views is empty: name the item views to quantise")
    return method, views, QuantizerParams.from_config(config, method)


def build_semantic_ids(config, method=None, force=False, show_progress=None):
    """Make sure ``sid-<method>/`` is current for ``config``'s dataset; return its folder."""
    logger = getLogger()
    method, views, params = check_settings(config, method)
    # Views the project computes itself must exist (and be current) before they are hashed.
    loaded = ensure_item_views(config, views) if method != "import" else None
    key = settings_key(config, method, views, params)
    inputs = input_files(config, method, views)
    digest = file_digest(*inputs, extra=key)
    out = output_dir(config, method, key)
    report_path = os.path.join(out, REPORT)
    complete = os.path.isfile(os.path.join(out, CODES_BEFORE))   # folders of older versions lack it
    if not force and os.path.isfile(report_path) and complete:
        with open(report_path) as f:
            if json.load(f).get("input_hash") == digest:
                logger.info(f"semantic IDs up to date: {out}")
                return out
        logger.info(f"semantic IDs in {out} are stale (inputs or settings changed): recomputing")
    start = time.time()
    items, _, _ = catalogue_and_train_pairs(config)
    device = config["device"] if config["device"] is not None else "cpu"
    show = config["show_progress"] if show_progress is None else show_progress
    codes, reports, before = compute_codes(config, method, views, items, params, device, show, loaded)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    parent = os.path.dirname(os.path.abspath(out))
    removed = remove_stale_temps(parent)
    if removed:
        logger.info(f"removed what killed runs left in {parent}: {', '.join(removed)}")
    tmp = temp_dir(parent, os.path.basename(out))
    try:
        for suffix in COPIED_SUFFIXES:
            src = atomic_file(config["data_path"], config["dataset"], suffix)
            if os.path.isfile(src):
                shutil.copyfile(src, atomic_file(tmp, config["dataset"], suffix))
        frame, types = item_table(config, items, codes)
        write_atomic(atomic_file(tmp, config["dataset"], "item"), frame, types)
        save_codes_before(tmp, items, before)
        report = {"dataset": config["dataset"], "method": method, "views": views,
                  "seed": config["seed"], "params": params.__dict__, "input_hash": digest,
                  "data_digest": data_digest(config), "data_settings": data_settings(config),
                  "inputs": {os.path.basename(p): file_digest(p) for p in inputs},
                  "n_items": len(items), "seconds": round(time.time() - start, 2), "per_view": reports,
                  "dropped_interactions": dropped_interactions(config)}
        with open(os.path.join(tmp, REPORT), "w") as f:
            json.dump(report, f, indent=2, default=list)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(f"semantic IDs written: {out}")
    return out


def dropped_interactions(config):
    """``{"interactions", "item_has_no_row"}`` of the dataset's ``.inter`` file: the interactions
    whose item has no ``.item`` row, which RecBole leaves out and the derived ``.item`` has no
    codes for (logged when there are any)."""
    total, absent = interactions_without_item_row(config["data_path"], config["dataset"], config["ITEM_ID_FIELD"],
                                                  config["load_col"])
    if absent:
        getLogger().warning(f"{atomic_file(config['data_path'], config['dataset'], 'inter')}: {absent} of {total} "
                            f"interactions name an item with no row in the .item file: RecBole leaves them out, "
                            f"and they get no semantic IDs")
    return {"interactions": total, "item_has_no_row": absent}


def read_report(folder):
    with open(os.path.join(folder, REPORT)) as f:
        return json.load(f)


@dataclass(frozen=True)
class SemanticIdDataset:
    """Where the pre-stage put a run's dataset: ``data_path`` (the folder with the ``<view>_sid``
    item features), the ``load_col`` that reads them, and the pre-stage's report (read once)."""
    data_path: str
    load_col: dict
    report: dict

    def codes_digest(self, dataset):
        """sha256 of the ``.item`` file holding the codes: a resumed run must train on the codes
        its first part trained on (the pre-stage's floats, hence its codes, differ across CPUs)."""
        return file_digest(atomic_file(self.data_path, dataset, "item"))


def kept_codes(config):
    """The semantic-ID dataset the run ``config["resume"]`` names trained on, or None (no resume,
    or a state written before runs kept their codes)."""
    from recbole_macrec.trainer.epoch_loop import codes_copy_of, find_state_file

    if not config["resume"]:
        return None
    folder = codes_copy_of(find_state_file(str(config["resume"])))
    if not os.path.isdir(folder):
        return None
    getLogger().info(f"resuming: the semantic IDs the run trained on, kept in {folder}")
    return folder


def semantic_id_dataset(config, views):
    """Run (or reuse) the pre-stage for ``config`` and return the dataset with the codes of
    ``views`` (``config`` is not changed: the caller points RecBole at the result). A resumed run
    whose state kept its codes (see ``codes_copy_of``) reads those instead."""
    data_path = kept_codes(config) or build_semantic_ids(config, config["sid_method"])
    fields = tuple(sid_field(v) for v in views)
    load_col = config["load_col"]
    if load_col is not None:
        load_col = dict(load_col)
        item_cols = list(load_col.get("item") or [config["ITEM_ID_FIELD"]])
        load_col["item"] = item_cols + [f for f in fields if f not in item_cols]
    getLogger().info(f"semantic IDs from {data_path}: fields {list(fields)}")
    return SemanticIdDataset(data_path, load_col, read_report(data_path))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--method", default=None, choices=METHODS)
    parser.add_argument("--model", default="SASRec",
                        help="model whose yaml is read with the config (only sid_* settings matter)")
    parser.add_argument("--config_files", default=None)
    parser.add_argument("--force", action="store_true", help="recompute even when up to date")
    args, _ = parser.parse_known_args(argv)

    import recbole_macrec  # noqa: F401
    from recbole.utils import init_logger, init_seed

    from recbole_macrec.config import Config

    files = args.config_files.split() if args.config_files else None
    config = Config(model=args.model, dataset=args.dataset, config_file_list=files)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    try:
        out = build_semantic_ids(config, args.method or config["sid_method"], args.force)
    except (SemanticIdError, ValueError) as err:
        sys.exit(f"error: {err}")
    report = read_report(out)
    for v in report["per_view"]:
        print(f"{v['view']}: collision rate {v['collision_rate_before']:.4f} -> "
              f"{v['collision_rate_after']:.4f}; usage per level "
              + ", ".join(f"{s['usage']:.2f}" for s in v["codebook_before"]))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
