"""Reading and writing RecBole atomic files (tab-separated, ``name:type`` headers)."""
import csv
import os

import pandas as pd

from recbole_macrec.errors import DataError
from recbole_macrec.files import atomic_path as atomic_temp


class AtomicFileError(DataError):
    """A missing or malformed atomic file; the message names the file."""


def sid_field(view):
    """The ``.item`` column (``float_seq``) holding the semantic IDs of ``view``."""
    return f"{view}_sid"


def atomic_file(data_dir, dataset, suffix):
    """The path of ``<dataset>.<suffix>`` (inter, item, user) in ``data_dir``."""
    return os.path.join(data_dir, f"{dataset}.{suffix}")


def read_atomic(path):
    """Return ``(frame, types)``: string columns named without their ``:type`` and the types."""
    if not os.path.isfile(path):
        raise AtomicFileError(f"atomic file not found: {path}")
    # RecBole reads with pandas' default quoting (a field in double quotes, "" for a quote): so do we
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    names, types = [], {}
    for header in frame.columns:
        if ":" not in header:
            raise AtomicFileError(f"{path}: column header '{header}' lacks ':type'")
        name, ftype = header.split(":", 1)
        names.append(name)
        types[name] = ftype
    frame.columns = names
    return frame, types


def write_atomic(path, frame, types):
    """Write ``frame`` with ``name:type`` headers; to a temp file first, then renamed into place.
    A cell with a tab, newline or double quote is quoted the way RecBole's reader (pandas) undoes,
    so every cell reads back unchanged."""
    out = frame.copy()
    out.columns = [f"{c}:{types[c]}" for c in frame.columns]
    with atomic_temp(path) as tmp:
        out.to_csv(tmp, sep="\t", index=False, quoting=csv.QUOTE_MINIMAL)


def interactions_without_item_row(data_path, dataset, iid, load_col):
    """``(interactions, of them whose item has no row in the .item file)`` of ``dataset`` in
    ``data_path``: RecBole leaves those out (``filter_inter_by_user_or_item``) without a word.
    The second is 0 when no .item file is read."""
    inter, _ = read_atomic(atomic_file(data_path, dataset, "inter"))
    item_path = atomic_file(data_path, dataset, "item")
    if "item" not in (load_col or {}) or not os.path.isfile(item_path) or iid not in inter.columns:
        return len(inter), 0
    items, _ = read_atomic(item_path)
    if iid not in items.columns:
        return len(inter), 0
    return len(inter), int((~inter[iid].isin(set(items[iid]))).sum())
