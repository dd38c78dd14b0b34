"""Leaderboard: every model on one split, one evaluator, one protocol; resumable.

    python -m recbole_macrec.leaderboard --dataset=ml-100k --models=MACRec,TIGER,MQL4GRec,SASRec,BERT4Rec \\
        [--seeds=3] [--config_files="a.yaml b.yaml"] [--preset=ablation] [--rerun] [--out=results/ml-100k]
    python -m recbole_macrec.leaderboard --dataset=Instruments --ingest OUT/runs.tgz   # add finished runs
    python -m recbole_macrec.leaderboard --readme                          # README results from files
    python -m recbole_macrec.leaderboard --dataset=ml-100k --compare "MACRec|TIGER" "MACRec|SASRec"

Each finished run is saved at once under ``<out>/runs/`` (json + per-user ranks), so an
interrupted leaderboard resumes where it stopped; ``--rerun`` redoes finished runs. The tables
(``leaderboard.md/.csv/.json``, ``leaderboard.png``) are always rebuilt from the run files.
"""
import argparse
import csv
import glob
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np
import yaml

from recbole_macrec.errors import DataError, SettingError
from recbole_macrec.config import PROPERTIES_DIR
from recbole_macrec.files import write_json

METRICS = [f"{m}@{k}" for m in ("hit", "ndcg") for k in (1, 5, 10, 20)]
CODE_METRICS = ["hit@1", "hit@10", "ndcg@10"]   # the code-level columns shown (the published rows' metrics)
KEY_METRIC = "ndcg@10"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


@dataclass
class Entry:
    """One leaderboard row: a display label, the model, and extra config files for it."""
    label: str
    model: str
    config_files: list = field(default_factory=list)


ABLATIONS = ["wo_con", "wo_align", "wo_implicit", "wo_explicit"]   # properties/ablation/<name>.yaml


def ablation_entry(name):
    """The leaderboard row of one ablation yaml, named by its ``run_label``."""
    path = PROPERTIES_DIR / "ablation" / f"{name}.yaml"
    with open(path) as f:
        label = yaml.safe_load(f)["run_label"]
    return Entry(label, "MACRec", [str(path)])


def changes_prestage(name):
    """True when ablation ``name`` only switches off a term of the semantic-ID pre-stage."""
    with open(PROPERTIES_DIR / "ablation" / f"{name}.yaml") as f:
        keys = set(yaml.safe_load(f)) - {"run_label"}
    return all(key.startswith("sid_") for key in keys)


def entries_for(models, preset=None, sid_method=None):
    """The rows to run. The ablation preset leaves out the pre-stage ablations when the dataset
    imports published codes (``sid_method: import``): those rows could not differ from MACRec's."""
    entries = [Entry(m, m) for m in models]
    if preset == "ablation":
        names = ABLATIONS
        if sid_method == "import":
            skipped = [n for n in ABLATIONS if changes_prestage(n)]
            names = [n for n in ABLATIONS if n not in skipped]
            print(f"ablation preset: {', '.join(skipped)} left out: they change the semantic-ID "
                  f"pre-stage, which this dataset skips (sid_method: import, published codes). To run "
                  f"them, train codes: --set sid_method=macrec (needs the dataset's item views).",
                  file=sys.stderr)
        entries = [Entry("MACRec", "MACRec")] + [ablation_entry(name) for name in names]
    elif preset is not None:
        raise ValueError(f"unknown preset '{preset}' (known: ablation)")
    return entries


def parse_overrides(items):
    """``{key: value}`` of command-line ``KEY=VALUE`` items, values read as data (5, 1e-3, True, [a, b])."""
    from recbole_macrec.config import parse_value

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SettingError(f"--set {item!r}: expected KEY=VALUE, e.g. epochs=5")
        overrides[key] = parse_value(value)
    return overrides


def slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def run_path(runs_dir, label, seed):
    return os.path.join(runs_dir, f"{slug(label)}-seed{seed}.json")


def run_entry(entry, dataset, seed, config_files, overrides, runs_dir):
    """Train and test one (entry, seed); the run's files appear in ``runs_dir`` only when done."""
    from recbole_macrec.quick_start import run_recbole

    with tempfile.TemporaryDirectory() as tmp:
        result = run_recbole(entry.model, dataset, config_file_list=config_files + entry.config_files,
                             config_dict={**overrides, "seed": seed, "results_dir": tmp})
        if entry.label != entry.model:   # a preset's row name (ablations); else the model's own label
            result["label"] = entry.label
        target = run_path(runs_dir, entry.label, seed)
        ranks = result["result_file"][: -len(".json")] + ".ranks.npz"
        if os.path.isfile(ranks):
            shutil.move(ranks, target[: -len(".json")] + ".ranks.npz")
        result["result_file"] = target
        write_json(target, result)
    return result


def run_problem(run):
    """Why ``run`` (a parsed json) is not a usable run result, or None."""
    if not isinstance(run, dict):
        return "not a json object"
    for key, kind in (("model", str), ("seed", int), ("epochs", int), ("test_result", dict)):
        if not isinstance(run.get(key), kind) or isinstance(run.get(key), bool):
            return f"'{key}' missing or not {kind.__name__}"
    if not all(isinstance(run["test_result"].get(m), (int, float)) for m in METRICS):
        return f"test_result lacks one of {', '.join(METRICS)}"
    if not isinstance(run.get("label", run["model"]), str):
        return "'label' is not a string"
    return None


def read_run_file(path):
    """``(run, None)`` for a usable run file, else ``(None, why)``."""
    try:
        with open(path) as f:
            run = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        return None, f"not readable json ({err})"
    problem = run_problem(run)
    if problem:
        return None, f"not a run result ({problem})"
    run.setdefault("label", run["model"])
    return run, None


def load_runs(runs_dir):
    """The usable run files of ``runs_dir``; a malformed one is reported and left out (one bad
    file must not stop every later leaderboard build)."""
    runs = []
    for path in sorted(glob.glob(os.path.join(runs_dir, "*.json"))):
        run, why = read_run_file(path)
        if run is None:
            print(f"warning: {path}: {why}: left out", file=sys.stderr)
            continue
        run["path"] = path
        runs.append(run)
    return runs


def entry_config(entry, dataset, seed, config_files, overrides):
    """The Config a run of ``entry`` would use (nothing loads)."""
    from recbole_macrec.config import Config
    from recbole_macrec.registry import get_model

    return Config(model=get_model(entry.model), dataset=dataset,
                  config_file_list=(config_files + entry.config_files) or None,
                  config_dict={**overrides, "seed": seed})


def current_settings_digest(entry, dataset, seed, config_files, overrides):
    """The settings digest a run of ``entry`` would record now."""
    from recbole_macrec.quick_start import effective_settings, settings_digest

    return settings_digest(effective_settings(entry_config(entry, dataset, seed, config_files, overrides)))


def label_entries(entries, dataset, config_files, overrides):
    """A row named by the model takes the run_label its settings give (``--set run_label=...``, a
    config file's): run files are named by label, so two settings of one model never share one.
    Two rows with one label are an error."""
    for entry in entries:
        if entry.label == entry.model:
            entry.label = entry_config(entry, dataset, 2020, config_files, overrides)["run_label"] or entry.label
    labels = [e.label for e in entries]
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice:
        raise SettingError(f"two rows would be named '{twice}' (one run_label for several models?): "
                           f"give each row its own label")
    return entries


def finished_run_matches(path, digest):
    """True when the run file at ``path`` was made with settings ``digest``; raises
    :class:`SettingError` naming the file when its settings differ or were not recorded."""
    with open(path) as f:
        stored = json.load(f)
    if stored.get("settings_digest") == digest:
        return True
    why = ("records no settings (made before runs recorded them)" if "settings_digest" not in stored
           else "was made with other settings")
    raise SettingError(f"{path} {why}: its row would mix settings. Use another --out, or --rerun to "
                       f"replace it")


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
    path = run["path"][: -len(".json")] + ".ranks.npz"
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


def comparisons(runs, rows, pairs, metric=KEY_METRIC):
    """Paired tests (per-user ``metric``) for each ``(label_a, label_b)`` pair of rows."""
    by_label = {r["label"]: r for r in rows}
    missing = sorted({lab for pair in pairs for lab in pair if lab not in by_label})
    if missing:
        raise SettingError(f"--compare: no row labelled {', '.join(map(repr, missing))}; rows are "
                           f"{', '.join(map(repr, by_label))}")
    return [paired_test(runs, by_label[a], by_label[b], metric) for a, b in pairs]


def comparison_lines(tests):
    lines = ["", f"Paired tests on per-user {tests[0]['metric'].upper()} (A - B; users matched by token, "
                 "per-user values averaged over each row's seeds):", "",
             "| A | B | users | mean difference | t-test p | Wilcoxon p |", "|---|---|---|---|---|---|"]
    for t in tests:
        if "note" in t:
            lines.append(f"| {t['best']} | {t['runner_up']} | {t.get('users', '—')} | {t['note']} | | |")
        else:
            lines.append(f"| {t['best']} | {t['runner_up']} | {t['users']} | {t['mean_difference']:+.4f} | "
                         f"{t['t_test_p']:.3g} | {t['wilcoxon_p']:.3g} |")
    return lines


def published_results(dataset):
    path = PROPERTIES_DIR / "dataset" / f"{dataset}.yaml"
    if not path.is_file():
        return {}
    return (yaml.safe_load(path.read_text()) or {}).get("published_results") or {}


def collision_rows(runs):
    seen = {}
    for run in runs:
        sid = run.get("semantic_ids")
        if sid and run["label"] not in seen:
            for view, v in sid["per_view"].items():
                seen.setdefault(run["label"], []).append({"label": run["label"], "method": sid["method"],
                                                          "view": view, **v})
    return [r for rows in seen.values() for r in rows]


def _fmt(row, m, best):
    text = f"{row[m]:.4f}" + (f" ± {row[m + '_std']:.4f}" if len(row["seeds"]) > 1 else "")
    return f"**{text}**" if best.get(m) == row[m] else text


def _seconds(value):
    return "—" if value is None else (f"{value:.1f}" if value < 100 else f"{value:.0f}")


def markdown(dataset, rows, sig, published, collisions, tests=()):
    shown = [m for m in METRICS if not m.endswith("@20")]
    coded = any("code_level" in r for r in rows)
    code_cols = CODE_METRICS if coded else []
    best = {m: max(r[m] for r in rows) for m in shown} if rows else {}
    name = lambda m: m.replace("hit", "HR").replace("ndcg", "NDCG")
    lines = [f"### {dataset}", "",
             "| model | epochs | seeds | " + " | ".join(name(m) for m in shown)
             + "".join(f" | code {name(m)}" for m in code_cols)
             + " | s/epoch | test s | wall s | machine |", "|" + "---|" * (len(shown) + len(code_cols) + 7)]
    for row in rows:
        code = row.get("code_level") or {}
        lines.append(f"| {row['label']} | {row['epochs_run']} | {len(row['seeds'])} | "
                     + " | ".join(_fmt(row, m, best) for m in shown)
                     + "".join(f" | {code[m]:.4f}" if m in code else " | —" for m in code_cols)
                     + f" | {_seconds(row.get('epoch_s'))} | {_seconds(row.get('test_s'))}"
                     + f" | {row['wall_time_s']:.0f} | {row['machine']} |")
    for model, values in published.items():
        paper = " | ".join(f"*{values[m]:.4f}*" if m in values else "—" for m in shown)
        code = "".join(f" | *{values[m]:.4f}*" if m in values else " | —" for m in code_cols)
        lines.append(f"| *{model} (paper)* | | | {paper}{code} | | | | |")
    lines.append("")
    lines.append("Test set, leave-one-out, full ranking over all items; mean ± std over seeds; best of "
                 "our rows in bold; *(paper)* rows are published numbers; epochs = epochs trained "
                 "(early stopping may end a run before its budget); s/epoch = median training epoch, "
                 "test s = the test pass (— where a run predates these records).")
    if coded:
        lines.append("code HR/NDCG: computed as the released evaluation does, on the published codes "
                     "before collision resolution (a prediction of a code that several items share "
                     "counts for each of them; each code once per list). The *(paper)* numbers were "
                     "computed that way, so they compare with the code columns; our exact HR/NDCG "
                     "score distinct items and are stricter. — where the codes had no collisions "
                     "(code = exact) or the run predates this record.")
    if sig:
        if "note" in sig:
            lines.append(f"Paired test, {sig['best']} vs {sig['runner_up']}: {sig['note']}.")
        else:
            lines.append(f"Paired test on per-user {sig['metric'].upper()}, {sig['best']} vs "
                         f"{sig['runner_up']} ({sig['users']} users): mean difference "
                         f"{sig['mean_difference']:+.4f}, t-test p = {sig['t_test_p']:.3g}, "
                         f"Wilcoxon p = {sig['wilcoxon_p']:.3g}.")
    if tests:
        lines += comparison_lines(tests)
    if collisions:
        lines += ["", "Semantic IDs (collision rate before -> after resolution):", "",
                  "| model | method | view | before | after | items moved |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['label']} | {c['method']} | {c['view']} | {c['collision_rate_before']:.4f} | "
                  f"{c['collision_rate_after']:.4f} | {c['items_moved']} |" for c in collisions]
    return "\n".join(lines) + "\n"


def plot(rows, path, dataset):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    repeated = {r["label"] for r in rows if sum(o["label"] == r["label"] for o in rows) > 1}
    labels = [f"{r['label']} ({r['epochs']} ep)" if r["label"] in repeated else r["label"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    for i, (m, name) in enumerate((("hit@10", "HR@10"), ("ndcg@10", "NDCG@10"))):
        ax.bar(x + (i - 0.5) * 0.38, [r[m] for r in rows], 0.38, yerr=[r[m + "_std"] for r in rows],
               label=name)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_title(f"{dataset}: test HR@10 and NDCG@10")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out_dir, dataset, runs, pairs=()):
    rows = aggregate(runs)
    sig = significance(runs, rows)
    tests = comparisons(runs, rows, pairs)
    published = published_results(dataset)
    collisions = collision_rows(runs)
    with open(os.path.join(out_dir, "leaderboard.md"), "w") as f:
        f.write(markdown(dataset, rows, sig, published, collisions, tests))
    with open(os.path.join(out_dir, "leaderboard.csv"), "w", newline="") as f:
        columns = ["label", "model", "epochs", "epochs_run", "seeds"] + [c for m in METRICS for c in (m, m + "_std")] \
            + ["epoch_s", "test_s", "wall_time_s", "machine"]
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**{c: row[c] for c in columns}, "seeds": " ".join(map(str, row["seeds"]))})
    write_json(os.path.join(out_dir, "leaderboard.json"), {
        "dataset": dataset, "rows": rows, "significance": sig, "comparisons": tests, "published": published, "semantic_ids": collisions,
        "runs": [{k: v for k, v in r.items() if k != "path"} | {"file": os.path.basename(r["path"])} for r in runs]})
    if rows:
        plot(rows, os.path.join(out_dir, "leaderboard.png"), dataset)
    return rows


def json_files(paths, scratch):
    """The json files among ``paths``: files as given, a folder's ``*.json``, and the ``*.json`` of
    a tar archive (``.tgz``, ``.tar.gz``, ``.tar``; extracted under ``scratch``)."""
    import tarfile

    files = []
    for i, path in enumerate(map(str, paths)):
        if path.endswith((".tgz", ".tar.gz", ".tar")):
            folder = os.path.join(scratch, str(i))
            with tarfile.open(path) as archive:
                archive.extractall(folder, filter="data")
            files += sorted(glob.glob(os.path.join(folder, "**", "*.json"), recursive=True))
        elif os.path.isdir(path):
            files += sorted(glob.glob(os.path.join(path, "*.json")))
        else:
            files.append(path)
    return files


def ingest(paths, runs_dir):
    """Copy finished run jsons (files, folders or tar archives from a GPU machine) into
    ``runs_dir``; the label gets the epoch count so that runs of one model with different budgets
    stay apart. Other jsons (profiles, benchmarks) are reported and left out. Returns the targets."""
    targets = []
    with tempfile.TemporaryDirectory() as scratch:
        for path in json_files(paths, scratch):
            run, why = read_run_file(path)
            if run is None:
                print(f"{path}: {why}: not ingested", file=sys.stderr)
                continue
            target = os.path.join(runs_dir, f"{slug(run['label'])}-e{int(run['epochs'])}-seed{int(run['seed'])}.json")
            write_json(target, run)   # strict JSON, whatever wrote the file
            ranks = path[: -len(".json")] + ".ranks.npz"
            if os.path.isfile(ranks):
                shutil.copyfile(ranks, target[: -len(".json")] + ".ranks.npz")
            print(f"ingested {path} -> {target}", file=sys.stderr)
            targets.append(target)
    return targets


def update_readme(readme="README.md", results_root="results"):
    """Replace the README's results block with every ``results/<dataset>/leaderboard.md`` (paths
    relative to the current folder: run it in the checkout)."""
    readme = Path(readme)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block")
    tables = [open(p).read() for p in sorted(glob.glob(os.path.join(results_root, "*", "leaderboard.md")))]
    block = README_START + "\n<!-- generated by python -m recbole_macrec.leaderboard --readme -->\n\n" \
        + "\n".join(tables) + README_END
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + block + text[end:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--dataset")
    parser.add_argument("--models", default="")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 2020, 2021, ...")
    parser.add_argument("--config_files", default="")
    parser.add_argument("--preset", default=None, choices=["ablation"])
    parser.add_argument("--rerun", action="store_true", help="redo finished runs")
    parser.add_argument("--out", default=None, help="default: results/<dataset>")
    parser.add_argument("--ingest", nargs="*", default=None,
                        help="run jsons to add: files, folders, or tar archives (.tgz) from a GPU run")
    parser.add_argument("--readme", action="store_true", help="rewrite the README's results block")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run, e.g. epochs=5")
    parser.add_argument("--compare", nargs="*", default=[], metavar="A|B",
                        help="paired tests between rows, by label, e.g. \"MACRec|TIGER\"")
    args = parser.parse_args(argv)
    if args.readme and not args.dataset:
        update_readme()
        return None
    if not args.dataset:
        parser.error("--dataset is required")

    import recbole_macrec  # noqa: F401
    from tqdm import tqdm

    from recbole_macrec.registry import get_model

    out = args.out or os.path.join("results", args.dataset)
    runs_dir = os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    if args.ingest:
        ingest(args.ingest, runs_dir)
    models = [m for m in args.models.split(",") if m]
    config_files = args.config_files.split() if args.config_files else []
    sid_method = None
    try:
        overrides = parse_overrides(args.set)
        pairs = parse_comparisons(args.compare)
        if args.preset == "ablation":
            from recbole_macrec.config import Config

            sys.argv = sys.argv[:1]
            sid_method = Config(model="MACRec", dataset=args.dataset, config_file_list=config_files or None,
                                config_dict=overrides)["sid_method"]
    except (SettingError, DataError) as err:
        sys.exit(f"error: {err}")
    entries = entries_for(models, args.preset, sid_method)
    for entry in entries:  # reject unknown models before anything runs
        try:
            get_model(entry.model)
        except ValueError as err:
            sys.exit(str(err))
    # RecBole's Config reads --key=value from sys.argv: keep the leaderboard's own flags away.
    sys.argv = sys.argv[:1]
    try:
        entries = label_entries(entries, args.dataset, config_files, overrides)
    except (SettingError, DataError) as err:
        sys.exit(f"error: {err}")
    todo = [(e, 2020 + s) for e in entries for s in range(args.seeds)]
    for entry, seed in todo:   # refuse before anything runs: a finished run with other settings
        path = run_path(runs_dir, entry.label, seed)
        if os.path.isfile(path) and not args.rerun:
            try:
                finished_run_matches(path, current_settings_digest(entry, args.dataset, seed, config_files, overrides))
            except (SettingError, DataError) as err:
                sys.exit(f"error: {err}")
    for entry, seed in tqdm(todo, desc=f"leaderboard {args.dataset}", ncols=100):
        if os.path.isfile(run_path(runs_dir, entry.label, seed)) and not args.rerun:
            print(f"{entry.label} seed {seed}: finished earlier with the same settings, kept", file=sys.stderr)
            continue
        try:
            run_entry(entry, args.dataset, seed, config_files, overrides, runs_dir)
        except (SettingError, DataError, FileNotFoundError) as err:
            sys.exit(f"error: {entry.label} seed {seed}: {err}")
    try:
        rows = write_outputs(out, args.dataset, load_runs(runs_dir), pairs)
    except SettingError as err:
        sys.exit(f"error: {err}")
    print(open(os.path.join(out, "leaderboard.md")).read())
    return rows


if __name__ == "__main__":
    main()
