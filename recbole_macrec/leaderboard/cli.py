"""Command line of the leaderboard (``python -m recbole_macrec.leaderboard``): see the package's
docstring."""
import argparse
import os
import sys

from recbole_macrec.errors import DataError, SettingError
from recbole_macrec.leaderboard.entries import current_settings_digest, entries_for, label_entries
from recbole_macrec.leaderboard.render import update_readme, write_outputs
from recbole_macrec.leaderboard.runs import (check_saved_state, checkpoint_dir, finished_run_matches, ingest, load_runs,
                                             run_entry, run_path)
from recbole_macrec.leaderboard.stats import parse_comparisons

FIXABLE = (SettingError, DataError)


def parse_args(argv, prog=None):
    from recbole_macrec.leaderboard import __doc__ as usage

    parser = argparse.ArgumentParser(prog=prog, description=usage, formatter_class=argparse.RawTextHelpFormatter)
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
    if not args.dataset and not args.readme:
        parser.error("--dataset is required")
    return args


def dataset_sid_method(dataset, config_files, overrides):
    """The ``sid_method`` MACRec would use on ``dataset`` (the ablation preset depends on it)."""
    from recbole_macrec.config import Config

    return Config(model="MACRec", dataset=dataset, config_file_list=config_files or None,
                  config_dict=overrides)["sid_method"]


def planned_entries(args, config_files, overrides):
    """The rows to run, labelled, every model known; a clear error before anything runs."""
    from recbole_macrec.registry import get_model

    sid_method = dataset_sid_method(args.dataset, config_files, overrides) if args.preset == "ablation" else None
    entries = entries_for([m for m in args.models.split(",") if m], args.preset, sid_method)
    for entry in entries:
        get_model(entry.model)
    return label_entries(entries, args.dataset, config_files, overrides)


def check_finished_runs(todo, runs_dir, args, config_files, overrides):
    """Refuse, before anything runs, to resume into a finished or killed run made with other settings."""
    for entry, seed in todo:
        if args.rerun:
            continue
        digest = current_settings_digest(entry, args.dataset, seed, config_files, overrides)
        path = run_path(runs_dir, entry.label, seed)
        if os.path.isfile(path):
            finished_run_matches(path, digest)
        else:
            check_saved_state(checkpoint_dir(runs_dir, entry.label, seed), digest)


def check_compare_names(pairs, entries, runs_dir):
    """Refuse, before anything runs, a ``--compare`` name that is neither a planned row's label or
    model nor a finished run's."""
    known = {name for e in entries for name in (e.label, e.model)}
    known |= {name for run in load_runs(runs_dir) for name in (run["label"], run["model"])}
    unknown = sorted({name for pair in pairs for name in pair if name not in known})
    if unknown:
        raise SettingError(f"--compare: no row or model {', '.join(map(repr, unknown))} in this leaderboard "
                           f"(rows and models: {', '.join(map(repr, sorted(known)))})")


def run_missing(todo, runs_dir, args, config_files, overrides):
    from tqdm import tqdm

    for entry, seed in tqdm(todo, desc=f"leaderboard {args.dataset}", ncols=100):
        if os.path.isfile(run_path(runs_dir, entry.label, seed)) and not args.rerun:
            print(f"{entry.label} seed {seed}: finished earlier with the same settings, kept", file=sys.stderr)
            continue
        try:
            run_entry(entry, args.dataset, seed, config_files, overrides, runs_dir, args.rerun)
        except (*FIXABLE, FileNotFoundError) as err:
            raise SettingError(f"{entry.label} seed {seed}: {err}") from err


def main(argv=None, prog=None):
    args = parse_args(argv, prog)
    if args.readme and not args.dataset:
        update_readme()
        return None
    import recbole_macrec  # noqa: F401
    from recbole_macrec.config import parse_overrides

    out = args.out or os.path.join("results", args.dataset)
    runs_dir = os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    if args.ingest:
        ingest(args.ingest, runs_dir)
    config_files = args.config_files.split() if args.config_files else []
    # RecBole's Config reads --key=value from sys.argv: keep the leaderboard's own flags away.
    sys.argv = sys.argv[:1]
    try:
        overrides = parse_overrides(args.set)
        pairs = parse_comparisons(args.compare)
        entries = planned_entries(args, config_files, overrides)
        check_compare_names(pairs, entries, runs_dir)
        todo = [(e, 2020 + s) for e in entries for s in range(args.seeds)]
        check_finished_runs(todo, runs_dir, args, config_files, overrides)
        run_missing(todo, runs_dir, args, config_files, overrides)
        rows = write_outputs(out, args.dataset, load_runs(runs_dir), pairs)
    except FIXABLE as err:
        sys.exit(f"error: {err}")
    except ValueError as err:   # an unknown model or preset: the message lists the known ones
        sys.exit(str(err))
    print(open(os.path.join(out, "leaderboard.md")).read())
    return rows
