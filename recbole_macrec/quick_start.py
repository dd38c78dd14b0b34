"""The plugin's runner: RecBole's pipeline for plugin models and RecBole built-ins alike.

Never imports ``recbole.quick_start`` (it imports ray, which breaks on numpy 2).
"""
import contextlib
import os
import time
from logging import getLogger
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_macrec.config import Config
from recbole_macrec.model.semantic_id_recommender import SemanticIdRecommender, model_views
from recbole_macrec.registry import get_model, get_trainer
from recbole_macrec.results import (effective_settings, machine_description, metric_values, semantic_id_summary,
                                    settings_digest, write_result_file)
from recbole_macrec.timing import PhaseTimer


class TestRankRecorder:
    """Records, per test user, the rank (1..max top-k, 0 = not ranked) of the held-out item, so
    that leaderboards can run paired significance tests on per-user metrics, and the ranked
    top-k items and the target (internal ids) for code-level metrics."""

    def __init__(self, trainer, dataset):
        self.trainer, self.dataset = trainer, dataset
        self.users, self.topk, self.top_items, self.targets = [], None, [], []
        collector, evaluator = trainer.eval_collector, trainer.evaluator
        self._collect, self._evaluate = collector.eval_batch_collect, evaluator.evaluate
        k = max(trainer.config["topk"])

        def collect(scores, interaction, positive_u, positive_i):
            self.users.append(interaction[dataset.uid_field].cpu())
            # the same call as RecBole's collector makes, so ties break the same way
            self.top_items.append(torch.topk(scores, k, dim=-1).indices.cpu())
            target = torch.full((len(scores),), -1, dtype=torch.long)
            target[positive_u.cpu()] = positive_i.cpu()
            self.targets.append(target)
            return self._collect(scores, interaction, positive_u, positive_i)

        def evaluate(struct):
            self.topk = struct.get("rec.topk")
            return self._evaluate(struct)

        collector.eval_batch_collect, evaluator.evaluate = collect, evaluate

    def ranks(self):
        """``(user tokens [n], rank [n])`` of the last evaluation (with several processes, the
        union of the ranks' users that the distributed evaluation gathered)."""
        hits = self.topk[:, :-1].numpy()
        rank = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0).astype(np.int16)
        users = getattr(self.trainer, "eval_users", None)
        users = torch.cat(self.users) if users is None else users
        users = self.dataset.id2token(self.dataset.uid_field, users.numpy())
        return np.asarray(users).astype(str), rank

    def ranked_items(self):
        """``(top-k items [n, K], target item [n])`` of the last evaluation (internal ids)."""
        return torch.cat(self.top_items), torch.cat(self.targets)

    def close(self):
        self.trainer.eval_collector.eval_batch_collect = self._collect
        self.trainer.evaluator.evaluate = self._evaluate


def code_level_result(config, dataset, model, recorder, semantic_ids):
    """Code-level Hit/NDCG (see :mod:`recbole_macrec.code_metrics`) of the test pass, over the
    published codes of the model's first inference view, when the codes were imported and that
    view's collided; else None (trained codes are resolved before training, as in the released
    pipelines, so their exact metrics are the released ones)."""
    from recbole_macrec.code_metrics import code_groups, code_level_ranks, metrics_from_ranks

    if semantic_ids is None or not config["single_spec"]:
        return None   # (several processes: each rank holds only its users' lists)
    views, report = model.inference_views, semantic_ids.report
    per_view = {v["view"]: v for v in report["per_view"]}
    if report["method"] != "import" or per_view.get(views[0], {}).get("collision_rate_before", 0) == 0:
        return None
    groups = code_groups(config["data_path"], views[0], dataset.field2id_token[dataset.iid_field])
    if groups is None:
        return None
    top, target = recorder.ranked_items()
    rank = code_level_ranks(top, target, groups)
    return {"view": views[0], "collision_rate_before": per_view[views[0]]["collision_rate_before"],
            "test_result": metrics_from_ranks(rank, config["topk"])}


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


def global_rank(config):
    return 0 if config["single_spec"] else config["local_rank"] + (config["offset"] or 0)


@contextlib.contextmanager
def first_rank_first(config):
    """With several processes, rank 0 runs the block before every other rank."""
    import torch.distributed as dist

    distributed = not config["single_spec"]
    if distributed and global_rank(config) != 0:
        dist.barrier()
    yield
    if distributed and global_rank(config) == 0:
        dist.barrier()


def load_best_everywhere(trainer):
    """Several processes: rank 0 (the one that saved it) loads the best checkpoint and every rank
    takes its weights, so that all test the same model (the others' checkpoint names differ)."""
    import torch.distributed as dist

    import recbole.trainer.trainer as trainer_module

    if global_rank(trainer.config) == 0:   # RecBole's trainer's view of torch trusts what it saved
        state = trainer_module.torch.load(trainer.saved_model_file, map_location=trainer.device)
        trainer.model.load_state_dict(state["state_dict"])
        trainer.model.load_other_parameter(state.get("other_parameter"))
    for tensor in trainer.model.state_dict().values():
        dist.broadcast(tensor, src=0)


class Run(NamedTuple):
    """One run as RecBole's pipeline builds it. ``settings``: :func:`effective_settings` as given
    (before the pre-stage points ``data_path`` at its folder); ``semantic_ids``: the
    :class:`SemanticIdDataset` a semantic-ID model reads, else None; ``dropped_interactions``:
    the counts :func:`report_dropped_interactions` logged, else None."""
    config: object
    dataset: object
    loaders: tuple
    model: object
    settings: dict
    semantic_ids: object
    dropped_interactions: object = None


def build_run(model, dataset=None, config_file_list=None, config_dict=None):
    """Config, seeded data and model of one run (a :class:`Run`); semantic-ID models get their
    semantic IDs first (the pre-stage runs if they are not cached), and RecBole reads the dataset
    the pre-stage wrote."""
    from recbole_macrec.semantic_ids import semantic_id_dataset

    model_class = get_model(model) if isinstance(model, str) else model
    config = Config(model=model_class, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict)
    settings = effective_settings(config)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    if config["cpu_threads"]:
        logger.info(f"CPU process {global_rank(config)}: {config['cpu_threads']}")

    for checked in (model_class, get_trainer(config["MODEL_TYPE"], config["model"])):
        check = getattr(checked, "check_settings", None)
        if check is not None:   # every setting error before minutes of pre-stage
            check(config)
    check_dataset_files(config)
    semantic_ids, data_path = None, config["data_path"]
    if issubclass(model_class, SemanticIdRecommender):
        with first_rank_first(config):   # one process runs the pre-stage, the others read its result
            semantic_ids = semantic_id_dataset(config, model_views(config))
        config["data_path"], config["load_col"] = semantic_ids.data_path, semantic_ids.load_col

    dataset_obj = create_dataset(config)
    logger.info(dataset_obj)
    dropped = report_dropped_interactions(config, dataset_obj, data_path)
    loaders = data_preparation(config, dataset_obj)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_obj = model_class(config, loaders[0]._dataset).to(config["device"])
    logger.info(model_obj)
    return Run(config, dataset_obj, loaders, model_obj, settings, semantic_ids, dropped)


def fit_and_test(run, saved):
    """Train ``run``'s model with its registered trainer, then test the best checkpoint. Returns
    ``(trainer, best_valid_score, best_valid_result, test_result, timer, recorder)``."""
    config = run.config
    train_data, valid_data, test_data = run.loaders
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, run.model)
    trainer.run_identity = {"model": config["model"], "dataset": config["dataset"], "seed": config["seed"],
                            "settings_digest": settings_digest(run.settings)}
    timer = PhaseTimer(trainer)
    if config["resume"]:
        if not hasattr(trainer, "resume_from"):
            from recbole_macrec.errors import SettingError

            raise SettingError(f"--resume: the trainer {type(trainer).__name__} keeps no resumable state")
        trainer.resume_from(str(config["resume"]))
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    recorder = TestRankRecorder(trainer, run.dataset)
    load_best = saved
    if saved and not config["single_spec"]:
        load_best_everywhere(trainer)
        load_best = False
    test_result = timer.test(lambda: trainer.evaluate(test_data, load_best_model=load_best,
                                                      show_progress=config["show_progress"]))
    recorder.close()
    timer.close()
    if config["gr_beam_check"] and isinstance(run.model, SemanticIdRecommender):
        from recbole_macrec.beam_check import beam_check

        trainer.beam_check = beam_check(run.model, test_data, int(config["gr_beam_check"]))
        getLogger().info(set_color("beam vs exact", "yellow") + f": {trainer.beam_check}")
    return trainer, best_valid_score, best_valid_result, test_result, timer, recorder


def result_record(run, trainer, best_valid_score, best_valid_result, test_result, timer, config_files):
    """The run's result file content (see :mod:`recbole_macrec.results`), without its path."""
    config = run.config
    result = {
        "model": config["model"],
        "label": config["run_label"] or getattr(run.model, "label", config["model"]),
        "dataset": config["dataset"],
        "seed": config["seed"],
        "epochs": trainer.epochs,   # as trained: memory-based models run 1, budgets plan their own
        "epochs_run": len(trainer.train_loss_dict),
        "best_valid_score": float(best_valid_score),
        "valid_score_bigger": getattr(trainer, "valid_metric_bigger", config["valid_metric_bigger"]),
        "best_valid_result": metric_values(best_valid_result),
        "test_result": metric_values(test_result),
        "timing": timer.summary(),
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


def run_recbole(model, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None):
    """Train and test ``model`` (a name or a class) on ``dataset`` with RecBole's pipeline.

    Returns a dict with ``best_valid_result``, ``test_result`` (metric -> value), ``result_file`` and
    run facts (seed, epochs, wall time, machine).
    """
    start = time.time()
    logger = getLogger()
    run = build_run(model, dataset, config_file_list, config_dict)
    config = run.config
    trainer, best_valid_score, best_valid_result, test_result, timer, recorder = fit_and_test(run, saved)
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = result_record(run, trainer, best_valid_score, best_valid_result, test_result, timer, config_file_list)
    code_level = code_level_result(config, run.dataset, run.model, recorder, run.semantic_ids)
    if code_level is not None:
        result["code_level"] = code_level
        logger.info(set_color("test result, code level", "yellow") + f": {code_level['test_result']}")
    result["wall_time_s"] = round(time.time() - start, 2)
    if global_rank(config) == 0:
        result["result_file"] = write_result_file(config, result, recorder.ranks())
        logger.info(set_color("results written to", "yellow") + f": {result['result_file']}")
    if not config["single_spec"]:
        import torch.distributed as dist

        dist.destroy_process_group()
    if queue is not None and global_rank(config) == 0:
        queue.put(result)
    return result


def _spawned_worker(rank, *args):
    model, dataset, config_file_list, config_dict, saved, queue = args
    run_recbole(model, dataset, config_file_list, {**config_dict, "local_rank": rank}, saved, queue)


def check_distributed(model, dataset, config_file_list, config_dict, nproc, world_size, ip, port, group_offset):
    """Settings several processes cannot use, named before any process starts: a batch the
    processes cannot share equally, more processes than GPUs, a port already in use."""
    import socket

    from recbole_macrec.errors import SettingError

    model_class = get_model(model) if isinstance(model, str) else model
    config = Config(model=model_class, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    check = getattr(model_class, "check_settings", None)
    if check is not None:
        check(config)
    batch = int(config["train_batch_size"])
    if batch % world_size:
        raise SettingError(f"train_batch_size={batch} is not a multiple of the world size {world_size}: "
                           f"every process takes an equal share of each batch")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() and config["use_gpu"] else 0
    if gpus and (config["ddp_backend"] or "nccl") == "nccl" and nproc > gpus:
        raise SettingError(f"--nproc={nproc} exceeds the {gpus} GPUs of this machine")
    if group_offset == 0:   # the first node serves the rendezvous on ip:port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((ip, int(port)))
            except OSError as err:
                raise SettingError(f"--port={port} on {ip} cannot be used ({err.strerror}): choose another") from err


def run(model, dataset=None, config_file_list=None, config_dict=None, saved=True, nproc=1,
        world_size=-1, ip="localhost", port="5678", group_offset=0):
    """One process, or ``nproc`` processes through RecBole's torch-DDP path (GPUs with NCCL, or the
    CPU with gloo); ``world_size`` / ``ip`` / ``port`` / ``group_offset`` span several machines."""
    if nproc == 1 and world_size <= 0:
        return run_recbole(model, dataset, config_file_list, config_dict, saved)
    import torch.multiprocessing as mp

    check_distributed(model, dataset, config_file_list, config_dict, nproc,
                      world_size if world_size > 0 else nproc, ip, port, group_offset)
    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update({"world_size": world_size if world_size > 0 else nproc, "ip": ip,
                        "port": port, "nproc": nproc, "offset": group_offset})
    mp.spawn(_spawned_worker, args=(model, dataset, config_file_list, config_dict, saved, queue),
             nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()
