"""Rows from runs (mean and std over seeds per label and settings) and paired significance tests
on per-user metrics, read from each run's ranks."""
import os

import numpy as np

from recbole_macrec.errors import SettingError
from recbole_macrec.results import ranks_path

METRICS = [f"{m}@{k}" for m in ("hit", "ndcg") for k in (1, 5, 10, 20)]
KEY_METRIC = "ndcg@10"


def row_key(run):
    """Runs of one row: same label, epochs and recorded settings (seeds differ)."""
    return run["label"], run["epochs"], run.get("settings_digest")


def timing_summary(group):
    """``(s/epoch, test s)`` of a row's runs: the median training epoch (the first one pays for
    warm-up) and the test pass, averaged over runs; ``None`` where runs did not record them."""
    epochs = [float(np.median(r["timing"]["train_epoch_s"])) for r in group
              if (r.get("timing") or {}).get("train_epoch_s")]
    tests = [r["timing"]["test_s"] for r in group if (r.get("timing") or {}).get("test_s") is not None]
    return (float(np.mean(epochs)) if epochs else None), (float(np.mean(tests)) if tests else None)


def curve_flags(run):
    """What a run's learning curve shows went wrong (a list of short phrases): the learning rate
    at 0 before the last epoch (a schedule sized on fewer steps than trained), or, over at least
    three validations, a validation score that never improved after the first ("did not learn";
    two validations are too few to say so)."""
    curve = run.get("curve") or []
    flags = []
    if any(c["lr_start"] == 0 for c in curve) or any(c["lr_end"] == 0 for c in curve[:-1]):
        flags.append("LR reached 0 before its last epoch")
    scores = [c["valid_score"] for c in curve if "valid_score" in c]
    bigger = run.get("valid_score_bigger", True)
    if len(scores) > 2 and not any((s > scores[0]) if bigger else (s < scores[0]) for s in scores[1:]):
        flags.append("did not learn (validation never improved after its first evaluation)")
    return flags


def curve_summary(group):
    """A row's curve facts over its runs: the best epoch (1-based, mean over runs), how many
    runs early stopping ended, and each run's flags by seed (None where runs predate curves)."""
    with_curve = [r for r in group if r.get("curve")]
    if not with_curve:
        return {"best_epoch": None, "early_stopped": None, "flags": {}}
    best = [r["best_epoch"] + 1 for r in with_curve if r.get("best_epoch") is not None]
    return {"best_epoch": float(np.mean(best)) if best else None,
            "early_stopped": f"{sum(bool(r.get('early_stopped')) for r in with_curve)}/{len(with_curve)}",
            "flags": {str(r["seed"]): curve_flags(r) for r in with_curve if curve_flags(r)}}


def aggregate(runs):
    """One row per (label, epochs, settings): mean and std over seeds of every test metric. Runs of
    one label with different recorded settings are different rows (their labels get the settings
    digest), never averaged together."""
    groups = {}
    for run in runs:
        groups.setdefault(row_key(run), []).append(run)
    clash = {label for label, _, _ in groups
             if len({d for lab, _, d in groups if lab == label}) > 1}
    rows = []
    for (label, epochs, digest), group in groups.items():
        run_epochs = {r.get("epochs_run", epochs) for r in group}
        shown = f"{label} [settings {digest or 'unrecorded'}]" if label in clash else label
        row = {"label": shown, "key": [label, epochs, digest], "model": group[0]["model"], "epochs": epochs,
               "epochs_run": "/".join(map(str, sorted(run_epochs))),
               "seeds": sorted(r["seed"] for r in group),
               "wall_time_s": float(np.mean([r["wall_time_s"] for r in group])),
               **dict(zip(("epoch_s", "test_s"), timing_summary(group))),
               **curve_summary(group),
               "machine": ", ".join(sorted({r["machine"] for r in group}))}
        for m in METRICS:
            values = np.array([r["test_result"][m] for r in group])
            row[m] = float(values.mean())
            row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        if all("code_level" in r for r in group):
            row["code_level"] = {m: float(np.mean([r["code_level"]["test_result"][m] for r in group]))
                                 for m in METRICS}
        rows.append(row)
    return sorted(rows, key=lambda r: -r[KEY_METRIC])


def per_user_metric(run, metric=KEY_METRIC):
    """``{user: value}`` of ``metric`` for a run with recorded ranks, else ``None``."""
    path = ranks_path(run["path"])
    if not os.path.isfile(path):
        return None
    data = np.load(path)
    name, k = metric.split("@")
    rank, k = data["rank"].astype(float), int(k)
    hit = (rank > 0) & (rank <= k)
    # rank 0 (= not in the top-k list) would divide by log2(1) = 0; it scores 0 anyway
    value = hit.astype(float) if name == "hit" else np.where(hit, 1 / np.log2(np.maximum(rank, 1) + 1), 0.0)
    return dict(zip(data["users"].tolist(), value))


def significance(runs, rows, metric=KEY_METRIC):
    """Paired tests of the best row against the runner-up on per-user ``metric`` (averaged over
    seeds, users matched by token): t-test and Wilcoxon signed-rank."""
    if len(rows) < 2:
        return None
    return paired_test(runs, rows[0], rows[1], metric)


def paired_test(runs, best, second, metric=KEY_METRIC):
    """Paired t-test and Wilcoxon test of row ``best`` against row ``second`` on per-user ``metric``."""
    from scipy import stats

    out = {"metric": metric, "best": best["label"], "runner_up": second["label"]}
    per_row = []
    for row in (best, second):
        users = [per_user_metric(r, metric) for r in runs if list(row_key(r)) == row["key"]]
        if any(u is None for u in users):
            return {**out, "note": "per-user ranks not recorded for these runs: no test"}
        common = set.intersection(*(set(u) for u in users))
        per_row.append({u: np.mean([d[u] for d in users]) for u in common})
    users = sorted(set(per_row[0]) & set(per_row[1]))
    a = np.array([per_row[0][u] for u in users])
    b = np.array([per_row[1][u] for u in users])
    if np.allclose(a, b):
        return {**out, "users": len(users), "note": "identical per-user values"}
    return {**out, "users": len(users), "mean_difference": float((a - b).mean()),
            "t_test_p": float(stats.ttest_rel(a, b).pvalue),
            "wilcoxon_p": float(stats.wilcoxon(a, b).pvalue)}


def parse_comparisons(items):
    """``["A|B", ...]`` -> ``[("A", "B"), ...]``; a clear error for anything else."""
    pairs = []
    for item in items:
        parts = [p.strip() for p in item.split("|")]
        if len(parts) != 2 or not all(parts):
            raise SettingError(f"--compare {item!r}: expected two row labels separated by '|', "
                               f"e.g. \"MACRec|TIGER\"")
        pairs.append(tuple(parts))
    return pairs


def row_named(rows, name):
    """The row labelled ``name``, else the only row of model ``name`` (a model's own label, such
    as LCRec's "LCRec (small LM from scratch)", is known only once it has run); None otherwise."""
    by_label = [r for r in rows if r["label"] == name]
    by_model = [r for r in rows if r["model"] == name]
    return by_label[0] if by_label else (by_model[0] if len(by_model) == 1 else None)


def comparisons(runs, rows, pairs, metric=KEY_METRIC):
    """Paired tests (per-user ``metric``) for each ``(a, b)`` pair of rows, each named by its label
    or by its model when that model has one row."""
    missing = sorted({name for pair in pairs for name in pair if row_named(rows, name) is None})
    if missing:
        raise SettingError(f"--compare: no row labelled {', '.join(map(repr, missing))} (nor one row of "
                           f"such a model); rows are {', '.join(repr(r['label']) for r in rows)}")
    return [paired_test(runs, row_named(rows, a), row_named(rows, b), metric) for a, b in pairs]
