"""Run files: running one row and seed into ``<out>/runs/`` (json + per-user ranks, written only
when the run is done), reading them back (a malformed file is reported, never fatal), checking a
finished run's settings before resuming, and ingesting runs made elsewhere (files, folders, tar
archives)."""
import glob
import json
import os
import re
import shutil
import sys
import tempfile

from recbole_macrec.errors import SettingError
from recbole_macrec.files import atomic_path, write_json
from recbole_macrec.leaderboard.stats import METRICS
from recbole_macrec.results import ranks_path


def slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def run_path(runs_dir, label, seed):
    return os.path.join(runs_dir, f"{slug(label)}-seed{seed}.json")


def checkpoint_dir(runs_dir, label, seed):
    """Where the run of (``label``, ``seed``) keeps its best checkpoint and resumable state:
    ``<out>/checkpoints/<label>-seed<seed>/`` (not part of the committed results)."""
    return os.path.join(os.path.dirname(os.path.abspath(runs_dir)), "checkpoints", f"{slug(label)}-seed{seed}")


def saved_state(folder):
    """The newest resumable state file in ``folder``, or None."""
    from recbole_macrec.trainer.epoch_loop import STATE_SUFFIX

    found = sorted(glob.glob(os.path.join(folder, "*" + STATE_SUFFIX)), key=os.path.getmtime)
    return found[-1] if found else None


def check_saved_state(folder, digest):
    """Refuse, naming the file, a killed run's state made with other settings than ``digest``."""
    from recbole_macrec.trainer.epoch_loop import read_state

    state = saved_state(folder)
    if state is None:
        return
    if read_state(state)["identity"].get("settings_digest") != digest:
        raise SettingError(f"{state}: a killed run of this row made with other settings; use another --out, "
                           f"or --rerun to start it anew")


def run_entry(entry, dataset, seed, config_files, overrides, runs_dir, rerun=False):
    """Train and test one (entry, seed); the run's files appear in ``runs_dir`` only when done. A
    run killed earlier continues from its last finished epoch (its state in :func:`checkpoint_dir`);
    ``rerun`` starts it anew."""
    from recbole_macrec.quick_start import run_recbole

    folder = checkpoint_dir(runs_dir, entry.label, seed)
    if rerun and os.path.isdir(folder):
        shutil.rmtree(folder)
    resume = saved_state(folder)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_recbole(entry.model, dataset, config_file_list=config_files + entry.config_files,
                             config_dict={**overrides, "seed": seed, "results_dir": tmp,
                                          "checkpoint_dir": folder, "resume": resume})
        if entry.label != entry.model:   # a preset's row name (ablations); else the model's own label
            result["label"] = entry.label
        target = run_path(runs_dir, entry.label, seed)
        if os.path.isfile(ranks_path(result["result_file"])):
            shutil.move(ranks_path(result["result_file"]), ranks_path(target))
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
            if os.path.isfile(ranks_path(path)):
                with atomic_path(ranks_path(target), suffix=".npz") as tmp:
                    shutil.copyfile(ranks_path(path), tmp)
            print(f"ingested {path} -> {target}", file=sys.stderr)
            targets.append(target)
    return targets
