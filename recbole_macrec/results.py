"""A run's result file: what it records (metrics, settings, timings, the semantic IDs used) and
where it and its per-user ranks (``<name>.ranks.npz``) are written. Read back by the leaderboard."""
import json
import os
import platform
import time

import numpy as np

from recbole_macrec.files import atomic_path, text_digest, write_json

# settings that do not change what a run computes (where it writes, what it shows, the device)
VOLATILE_SETTINGS = {"seed", "results_dir", "device", "use_gpu", "gpu_id", "local_rank", "single_spec", "state",
                     "show_progress", "log_wandb", "wandb_project", "checkpoint_dir", "nproc", "world_size", "offset",
                     "ip", "port", "worker", "run_label", "resume", "cpu_threads"}


def ranks_path(result_file):
    """The per-user ranks file that belongs to the result json ``result_file``."""
    return result_file[: -len(".json")] + ".ranks.npz"


def machine_description():
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}"


def semantic_id_summary(report, folder):
    """The pre-stage ``report``'s method, its ``folder`` and the per-view collision figures."""
    return {"method": report["method"], "folder": folder,
            "per_view": {v["view"]: {k: v[k] for k in ("collision_rate_before", "collision_rate_after",
                                                       "items_moved")} for v in report["per_view"]}}


def metric_values(result):
    return {k: float(v) for k, v in (result or {}).items()}


def effective_settings(config):
    """The run's settings as data (sorted; values json-safe), without :data:`VOLATILE_SETTINGS`:
    two runs with equal settings differ only in seed, device and where they write."""
    def plain(value):
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return str(value)

    return {key: plain(value) for key, value in sorted(config.final_config_dict.items())
            if key not in VOLATILE_SETTINGS}


def settings_digest(settings):
    return text_digest(json.dumps(settings, sort_keys=True), 16)


def write_result_file(config, result, ranks=None):
    """Write one run's results as json under ``config['results_dir']`` (and ``ranks``, the per-user
    ranks of the test target, beside it: :func:`ranks_path`); returns the json path."""
    out_dir = config["results_dir"]
    os.makedirs(out_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem = os.path.join(out_dir, f"{config['model']}-{config['dataset']}-{stamp}")
    path, copy = f"{stem}.json", 1
    while os.path.exists(path):   # two runs finished in the same second: keep both
        copy += 1
        path = f"{stem}-{copy}.json"
    if ranks is not None:
        users, rank = ranks
        with atomic_path(ranks_path(path), suffix=".npz") as tmp:
            np.savez_compressed(tmp, users=users, rank=rank)
    write_json(path, result)
    return path


def result_record(run, fitted, config_files):
    """A run's result file content, without its path: ``run`` is the runner's :class:`Run`,
    ``fitted`` its :class:`Fitted` (trainer, best validation, test result, timer, recorder)."""
    import torch

    config, trainer = run.config, fitted.trainer
    result = {
        "model": config["model"],
        "label": config["run_label"] or getattr(run.model, "label", config["model"]),
        "dataset": config["dataset"],
        "seed": config["seed"],
        "epochs": trainer.epochs,   # as trained: memory-based models run 1, budgets plan their own
        "epochs_run": len(trainer.train_loss_dict),
        "best_valid_score": float(fitted.best_valid_score),
        "valid_score_bigger": getattr(trainer, "valid_metric_bigger", config["valid_metric_bigger"]),
        "best_valid_result": metric_values(fitted.best_valid_result),
        "test_result": metric_values(fitted.test_result),
        "timing": fitted.timer.summary(),
        "curve": getattr(trainer, "curve", None),
        "best_epoch": getattr(trainer, "best_epoch", None),
        "early_stopped": getattr(trainer, "stopped", None),
        "machine": machine_description(),
        "torch_threads": torch.get_num_threads(),
        "config_files": list(config_files or []),
        "settings": run.settings,
        "settings_digest": settings_digest(run.settings),
    }
    if getattr(trainer, "budget_plan", None):
        result["train_budget"] = trainer.budget_plan
    if getattr(trainer, "beam_check", None):
        result["beam_check"] = trainer.beam_check
    if getattr(trainer, "schedule", None):
        result["schedule"] = trainer.schedule
    if getattr(trainer, "resumed_at_epoch", None) is not None:
        result["resumed_at_epoch"] = trainer.resumed_at_epoch
    if run.semantic_ids is not None:
        result["semantic_ids"] = semantic_id_summary(run.semantic_ids.report, run.semantic_ids.data_path)
    if run.dropped_interactions is not None:
        result["dropped_interactions"] = run.dropped_interactions
    return result
