"""Item views: one float32 embedding matrix per modality, joined to items by raw item token.

File format (``<dataset>.<view>.npz``): ``item_ids`` (str array, raw item tokens), ``emb``
(float32 ``[n, d]``) and optionally ``source_hash`` (what the view was computed from).
"""
import os
import zipfile
from pathlib import Path

import numpy as np

from recbole_macrec.errors import DataError, require_items
from recbole_macrec.files import atomic_path


class ItemViewError(DataError):
    """A view file that does not fit the dataset: the message names the file and the item."""


def _inside_recbole_package(path):
    import recbole

    pkg = os.path.realpath(os.path.dirname(recbole.__file__))
    return os.path.realpath(path).startswith(pkg + os.sep)


def work_dir(config):
    """Writable folder for files derived from the dataset (item views, semantic IDs).

    The dataset's own folder, except for datasets inside RecBole's wheel (ml-100k), which get a
    project-side ``dataset/<name>`` folder: site-packages is never written.
    """
    if config["item_view_dir"]:
        return config["item_view_dir"]
    data_dir = config["data_path"]  # the dataset's folder, as RecBole resolved it
    if _inside_recbole_package(data_dir):
        return os.path.join("dataset", config["dataset"])
    return data_dir


def item_view_path(config, view):
    return os.path.join(work_dir(config), f"{config['dataset']}.{view}.npz")


def save_item_view(path, item_ids, emb, source_hash=""):
    """Write a view atomically (temp file, then rename): a failed run leaves no half file."""
    item_ids = np.asarray([str(i) for i in item_ids])
    emb = np.asarray(emb, dtype=np.float32)
    check_item_view(path, item_ids, emb)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, item_ids=item_ids, emb=emb, source_hash=np.asarray(source_hash))


def check_item_view(path, item_ids, emb):
    if emb.ndim != 2 or len(item_ids) != emb.shape[0]:
        raise ItemViewError(f"{path}: emb has shape {emb.shape} for {len(item_ids)} item_ids")
    uniq, counts = np.unique(item_ids, return_counts=True)
    if (counts > 1).any():
        raise ItemViewError(f"{path}: duplicate item id '{uniq[counts > 1][0]}' "
                            f"({int((counts > 1).sum())} duplicated ids)")
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise ItemViewError(f"{path}: NaN/Inf in the row of item '{item_ids[np.argmax(bad)]}' "
                            f"({int(bad.sum())} bad rows)")


def load_item_view(path, items=None, dim=None):
    """Load a view; with ``items`` (raw tokens) return rows in that order, ``[len(items), d]``.

    Raises :class:`ItemViewError` naming the file and item for a missing file, duplicate ids,
    NaN/Inf rows, items absent from the view, or a dimension other than ``dim``.
    """
    if not os.path.isfile(path):
        raise ItemViewError(f"item view file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "item_ids" not in data or "emb" not in data:
                raise ItemViewError(f"{path}: needs arrays 'item_ids' and 'emb'")
            item_ids = data["item_ids"].astype(str)
            emb = data["emb"].astype(np.float32)
            source_hash = str(data["source_hash"]) if "source_hash" in data else ""
    except ItemViewError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ItemViewError(f"{path}: not a readable .npz item view ({err})") from err
    check_item_view(path, item_ids, emb)
    if dim is not None and emb.shape[1] != dim:
        raise ItemViewError(f"{path}: dimension {emb.shape[1]}, expected {dim}")
    if items is None:
        return item_ids, emb, source_hash
    row_of = {tok: i for i, tok in enumerate(item_ids)}
    require_items(items, row_of, path, ItemViewError)
    order = np.fromiter((row_of[tok] for tok in items), dtype=np.int64, count=len(items))
    return np.asarray(items), emb[order], source_hash
