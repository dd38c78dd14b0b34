"""Item views the project can compute itself from a RecBole dataset.

- ``text``: the chosen ``.item`` text fields through a local pretrained encoder (``text_encoder``:
  per field the mean-pooled last hidden state, then the mean over fields), or, without one,
  TF-IDF over the fields reduced with TruncatedSVD.
- ``collab``: item factors (TruncatedSVD of the item x user matrix) from the TRAINING split only,
  as RecBole makes it under the configured ``eval_args``: no valid/test interaction is seen.
"""
from logging import getLogger

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from recbole_macrec.data.atomic import atomic_file, read_atomic
from recbole_macrec.data.item_views import ItemViewError
from recbole_macrec.errors import require_items


_last_catalogue = {}   # {key: result}: the views and the pre-stage of one run share one dataset load


def _catalogue_key(config):
    """The config (every setting can change RecBole's filtering and split) and the atomic files'
    size and modification time."""
    import os

    stats = []
    for suffix in ("inter", "item", "user"):
        path = atomic_file(config["data_path"], config["dataset"], suffix)
        if os.path.isfile(path):
            st = os.stat(path)
            stats.append((suffix, st.st_size, st.st_mtime_ns))
    return repr(sorted(config.final_config_dict.items())), tuple(stats)


def catalogue_and_train_pairs(config):
    """RecBole's item catalogue (raw tokens, internal-id order), the training (user, item) pairs
    and the number of users; built once per config and data files, however many views ask."""
    from recbole.data.dataset import Dataset

    key = _catalogue_key(config)
    if key not in _last_catalogue:
        dataset = Dataset(config)
        iid, uid = config["ITEM_ID_FIELD"], config["USER_ID_FIELD"]
        items = list(dataset.field2id_token[iid][1:])
        train = dataset.build()[0]
        pairs = np.stack([train.inter_feat[uid].numpy(), train.inter_feat[iid].numpy() - 1], axis=1)
        _last_catalogue.clear()
        _last_catalogue[key] = (items, pairs, dataset.user_num)
    items, pairs, n_users = _last_catalogue[key]
    return list(items), pairs.copy(), n_users


def data_digest(config):
    """sha256 of the item catalogue and the training pairs as RecBole makes them under ``config``:
    every filter and split setting that changes the data changes it."""
    import hashlib

    items, pairs, n_users = catalogue_and_train_pairs(config)
    h = hashlib.sha256("\n".join(items).encode())
    h.update(np.ascontiguousarray(pairs, dtype=np.int64).tobytes())
    h.update(str(n_users).encode())
    return h.hexdigest()


def collab_view(config, dim=64):
    """``(items, emb)``: ``emb[i]`` from training interactions only; items never trained on get 0."""
    items, pairs, n_users = catalogue_and_train_pairs(config)
    matrix = sp.csr_matrix(
        (np.ones(len(pairs), dtype=np.float32), (pairs[:, 1], pairs[:, 0])),
        shape=(len(items), n_users),
    )
    matrix.data[:] = 1.0  # repeated interactions count once
    dim = min(dim, min(matrix.shape) - 1)
    svd = TruncatedSVD(n_components=dim, random_state=config["seed"])
    emb = svd.fit_transform(matrix).astype(np.float32)
    getLogger().info(f"collab view: {len(items)} items x {dim} dims from {len(pairs)} training "
                     f"interactions ({int((matrix.getnnz(axis=1) == 0).sum())} items unseen in training)")
    return items, emb


def text_view(config, items, fields, dim=64):
    """``(items, emb)`` from the text in ``fields`` of the dataset's ``.item`` file."""
    path = atomic_file(config["data_path"], config["dataset"], "item")
    frame, _ = read_atomic(path)
    id_field = config["ITEM_ID_FIELD"]
    for field in [id_field, *fields]:
        if field not in frame.columns:
            raise ItemViewError(f"{path}: no field '{field}' for the text view")
    frame = frame.drop_duplicates(id_field).set_index(id_field)
    require_items(items, frame.index, path, ItemViewError)
    if config["text_encoder"]:
        from recbole_macrec.data.text_encoder import TextEncoder

        encoder = TextEncoder(config["text_encoder"], "cpu" if config["device"] is None else config["device"],
                              config["text_encoder_sha256"])
        rows = frame.loc[items, list(fields)].astype(str).values.tolist()
        return items, encoder.embed_all(rows, progress=config["show_progress"])
    texts = frame.loc[items, list(fields)].agg(" ".join, axis=1).tolist()
    tfidf = TfidfVectorizer(min_df=1, token_pattern=r"(?u)\b\w[\w']*\b").fit_transform(texts)
    dim = min(dim, min(tfidf.shape) - 1)
    emb = TruncatedSVD(n_components=dim, random_state=config["seed"]).fit_transform(tfidf)
    return items, emb.astype(np.float32)


def _view_source_hash(config, view):
    from recbole_macrec.files import file_digest

    inter = atomic_file(config["data_path"], config["dataset"], "inter")
    files = [inter]
    item = atomic_file(config["data_path"], config["dataset"], "item")
    if view == "text":
        files.append(item)
    data = data_digest(config)
    params = f"{view}|{config['text_view_fields']}|{config['view_dim']}|{config['seed']}|{config['eval_args']}|{data}"
    if view == "text" and config["text_encoder"]:
        from recbole_macrec.data.text_encoder import check_encoder

        files.append(check_encoder(config["text_encoder"], config["text_encoder_sha256"]))
        params = f"{view}|{config['text_view_fields']}|encoder|{data}"
    return file_digest(*files, extra=params)


def ensure_item_views(config, views):
    """Load the dataset's item views as ``{view: (items, emb)}``, computing ``text``/``collab``
    views on first use (cached next to the dataset, recomputed when their sources change)."""
    import os

    from recbole_macrec.data.item_views import item_view_path, load_item_view, save_item_view

    logger = getLogger()
    out = {}
    for view in views:
        path = item_view_path(config, view)
        computable = view == "collab" or (view == "text" and config["text_view_fields"])
        expected = _view_source_hash(config, view) if computable else None
        if os.path.isfile(path):
            items, emb, source_hash = load_item_view(path)
            if not computable or source_hash == expected or not source_hash:
                if computable and not source_hash:   # the user's own file: never replaced
                    logger.info(f"item view '{view}': using {path}, a file the project did not compute "
                                f"(remove it to have the view computed from the dataset)")
                out[view] = (list(items), emb)
                continue
            logger.info(f"item view {path} is stale (its sources changed): recomputing")
        elif not computable:
            raise ItemViewError(
                f"item view '{view}' not found: {path} (make it with dataset_prep/, or set "
                f"text_view_fields to compute a text view from the .item file)")
        dim = config["view_dim"]
        if view == "collab":
            items, emb = collab_view(config, dim)
        else:
            items, _, _ = catalogue_and_train_pairs(config)
            items, emb = text_view(config, items, config["text_view_fields"], dim)
        save_item_view(path, items, emb, source_hash=expected)
        logger.info(f"item view '{view}' written: {path} {emb.shape}")
        out[view] = (list(items), emb)
    return out
