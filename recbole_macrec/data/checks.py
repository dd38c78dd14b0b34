"""Checks of a dataset's atomic files before RecBole reads them, and what RecBole leaves out."""
import os
from logging import getLogger

import numpy as np
import pandas as pd


def check_dataset_files(config):
    """Fail early, naming the file, when the dataset's interaction file is missing or holds a
    value that is not a number in a ``float`` column (RecBole would stop with a raw traceback)."""
    from recbole_macrec.data.atomic import atomic_file, read_atomic
    from recbole_macrec.errors import DataError

    path = atomic_file(config["data_path"], config["dataset"], "inter")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"dataset '{config['dataset']}': atomic file not found: {path} "
            f"(set data_path, or convert the data with dataset_prep/)")
    frame, types = read_atomic(path)
    for column, kind in types.items():
        if kind != "float":
            continue
        values = frame[column]
        bad = pd.to_numeric(values, errors="coerce").isna() & values.str.strip().ne("")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{path}: line {row + 2}: '{column}' is {values.iloc[row]!r}, not a number "
                            f"({int(bad.sum())} such lines)")


def report_dropped_interactions(config, dataset, data_path):
    """Log how many rows of the ``.inter`` file in ``data_path`` (the user's dataset, before any
    pre-stage folder) RecBole left out, and how many of those because their item has no row in
    the ``.item`` file, which RecBole does silently; returns the counts (None when none)."""
    from recbole_macrec.data.atomic import atomic_file, interactions_without_item_row

    total, absent = interactions_without_item_row(data_path, config["dataset"], config["ITEM_ID_FIELD"],
                                                  config["load_col"])
    dropped = total - dataset.inter_num
    if dropped <= 0:
        return None
    inter_path = atomic_file(data_path, config["dataset"], "inter")
    message = f"RecBole kept {dataset.inter_num} of the {total} interactions in {inter_path}"
    if absent:
        message += (f"; {absent} left out because their item has no row in "
                    f"{atomic_file(data_path, config['dataset'], 'item')} (filter_inter_by_user_or_item)")
    if dropped > absent:
        message += f"; {dropped - absent} by its other filters (duplicates, interaction counts, value intervals)"
    getLogger().warning(message)
    return {"interactions": total, "kept": int(dataset.inter_num), "item_has_no_row": absent,
            "other_filters": dropped - absent}
