"""The leaderboard's files, always rebuilt from the run files: ``leaderboard.md`` (with published
rows, paired tests and collision rates), ``.csv``, ``.json`` and ``.png``; and the README's results
block."""
import csv
import glob
import io
import os
from pathlib import Path

import numpy as np
import yaml

from recbole_macrec.config import PROPERTIES_DIR
from recbole_macrec.files import atomic_path, write_json, write_text
from recbole_macrec.leaderboard.stats import METRICS, aggregate, comparisons, significance

CODE_METRICS = ["hit@1", "hit@10", "ndcg@10"]   # the code-level columns shown (the published rows' metrics)
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


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


def _best_epoch(row):
    value = row.get("best_epoch")
    return "—" if value is None else f"{round(value, 1):g}"   # a mean over seeds: one decimal


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
             + " | best ep | early stop | s/epoch | test s | wall s | machine |",
             "|" + "---|" * (len(shown) + len(code_cols) + 9)]
    for row in rows:
        code = row.get("code_level") or {}
        lines.append(f"| {row['label']} | {row['epochs_run']} | {len(row['seeds'])} | "
                     + " | ".join(_fmt(row, m, best) for m in shown)
                     + "".join(f" | {code[m]:.4f}" if m in code else " | —" for m in code_cols)
                     + f" | {_best_epoch(row)} | {row.get('early_stopped') or '—'}"
                     + f" | {_seconds(row.get('epoch_s'))} | {_seconds(row.get('test_s'))}"
                     + f" | {row['wall_time_s']:.0f} | {row['machine']} |")
    for model, values in published.items():
        paper = " | ".join(f"*{values[m]:.4f}*" if m in values else "—" for m in shown)
        code = "".join(f" | *{values[m]:.4f}*" if m in values else " | —" for m in code_cols)
        lines.append(f"| *{model} (paper)* | | | {paper}{code} | | | | | | |")
    lines.append("")
    lines.append("Test set, leave-one-out, full ranking over all items; mean ± std over seeds; best of "
                 "our rows in bold; *(paper)* rows are published numbers; epochs = epochs trained "
                 "(early stopping may end a run before its budget); s/epoch = median training epoch, "
                 "test s = the test pass; wall s = a run's wall time, every resumed part included "
                 "(mean over seeds); best ep = the epoch validation selected (1-based, mean over "
                 "seeds); early stop = runs that early stopping ended, of those with a learning "
                 "curve (— where a run predates these records).")
    flagged = [f"{row['label']} (seed {seed}): {'; '.join(flags)}" for row in rows
               for seed, flags in sorted((row.get("flags") or {}).items())]
    if flagged:
        lines.append("")
        lines.append("**Learning-curve flags** (`curves.png`): " + " | ".join(flagged) + ".")
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
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def plot_curves(runs, path, dataset):
    """One panel per row label: validation score (the selection metric; solid, left axis) and
    mean training loss (dashed, right axis) against the epoch, one colour per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({r["label"] for r in runs if r.get("curve")})
    if not labels:
        return False
    cols = min(3, len(labels))
    rows_n = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.2 * rows_n), squeeze=False)
    for ax, label in zip(axes.flat, labels):
        loss_ax = ax.twinx()
        for i, run in enumerate(sorted((r for r in runs if r["label"] == label and r.get("curve")),
                                       key=lambda r: r["seed"])):
            colour = f"C{i}"
            curve = run["curve"]
            valid = [(c["epoch"] + 1, c["valid_score"]) for c in curve if "valid_score" in c]
            if valid:
                ax.plot(*zip(*valid), color=colour, marker="o", ms=2.5, label=f"seed {run['seed']}")
            loss_ax.plot([c["epoch"] + 1 for c in curve], [c["train_loss"] for c in curve], color=colour,
                         ls="--", alpha=0.6)
            if run.get("best_epoch") is not None:
                ax.axvline(run["best_epoch"] + 1, color=colour, lw=0.6, alpha=0.5)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid score (solid)", fontsize=8)
        loss_ax.set_ylabel("train loss (dashed)", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    fig.suptitle(f"{dataset}: learning curves (validation score: the selection metric, NDCG@10 unless a "
                 f"run selects on its validation loss)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return True


def csv_table(rows):
    """The rows as csv text: every metric with its std over seeds, timings and machine."""
    columns = ["label", "model", "epochs", "epochs_run", "seeds"] + [c for m in METRICS for c in (m, m + "_std")] \
        + ["best_epoch", "early_stopped", "epoch_s", "test_s", "wall_time_s", "machine"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({**{c: row[c] for c in columns}, "seeds": " ".join(map(str, row["seeds"]))})
    return out.getvalue()


def write_outputs(out_dir, dataset, runs, pairs=()):
    rows = aggregate(runs)
    sig = significance(runs, rows)
    tests = comparisons(runs, rows, pairs)
    published = published_results(dataset)
    collisions = collision_rows(runs)
    write_text(os.path.join(out_dir, "leaderboard.md"), markdown(dataset, rows, sig, published, collisions, tests))
    write_text(os.path.join(out_dir, "leaderboard.csv"), csv_table(rows))
    write_json(os.path.join(out_dir, "leaderboard.json"), {
        "dataset": dataset, "rows": rows, "significance": sig, "comparisons": tests, "published": published, "semantic_ids": collisions,
        "runs": [{k: v for k, v in r.items() if k != "path"} | {"file": os.path.basename(r["path"])} for r in runs]})
    if rows:
        plot(rows, os.path.join(out_dir, "leaderboard.png"), dataset)
        plot_curves(runs, os.path.join(out_dir, "curves.png"), dataset)
    return rows


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
    write_text(readme, text[:start] + block + text[end:])
