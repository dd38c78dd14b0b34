"""Leaderboard: every model on one split, one evaluator, one protocol; resumable.

    python -m recbole_macrec.leaderboard --dataset=ml-100k --models=MACRec,TIGER,MQL4GRec,SASRec,BERT4Rec \\
        [--seeds=3] [--config_files="a.yaml b.yaml"] [--preset=ablation] [--rerun] [--out=results/ml-100k]
    python -m recbole_macrec.leaderboard --dataset=Instruments --ingest OUT/runs.tgz   # add finished runs
    python -m recbole_macrec.leaderboard --readme                          # README results from files
    python -m recbole_macrec.leaderboard --dataset=ml-100k --compare "MACRec|TIGER" "MACRec|SASRec"

Each finished run is saved at once under ``<out>/runs/`` (json + per-user ranks), so an
interrupted leaderboard resumes where it stopped; ``--rerun`` redoes finished runs. The tables
(``leaderboard.md/.csv/.json``, ``leaderboard.png``) are always rebuilt from the run files.

Modules: ``entries`` (rows and presets), ``runs`` (run files: run, read, resume, ingest),
``stats`` (rows from runs, paired tests), ``render`` (md/csv/json/png, README block), ``cli``.
"""
__all__ = ["main", "Entry", "entries_for", "label_entries", "README_END", "README_START", "markdown",
           "update_readme", "write_outputs", "ingest", "load_runs", "run_path", "METRICS", "aggregate",
           "comparisons", "paired_test", "parse_comparisons"]

from recbole_macrec.leaderboard.cli import main  # noqa: F401,E402
from recbole_macrec.leaderboard.entries import Entry, entries_for, label_entries  # noqa: F401,E402
from recbole_macrec.leaderboard.render import README_END, README_START, markdown, update_readme, write_outputs  # noqa: F401,E402
from recbole_macrec.leaderboard.runs import ingest, load_runs, run_path  # noqa: F401,E402
from recbole_macrec.leaderboard.stats import METRICS, aggregate, comparisons, paired_test, parse_comparisons  # noqa: F401,E402
