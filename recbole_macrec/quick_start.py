"""The plugin's runner: RecBole's pipeline for plugin models and RecBole built-ins alike.

``build_run`` (config, settings checks, the semantic-ID pre-stage for the models that read
codes, data, model), ``fit_and_test`` (the registered trainer's fit, then the best epoch's test),
``run_recbole`` (one process, result file), ``run`` (one process or several). Never imports
``recbole.quick_start`` (it imports ray, which breaks on numpy 2).
"""
import time
from logging import getLogger
from typing import NamedTuple

from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_macrec.config import Config
from recbole_macrec.data.checks import check_dataset_files, report_dropped_interactions
from recbole_macrec.distributed import (check_distributed, end_process_group, first_rank_first, global_rank,
                                        launch, load_best_everywhere)
from recbole_macrec.errors import SettingError
from recbole_macrec.evaluation import TestRankRecorder, code_level_result
from recbole_macrec.model.semantic_id_recommender import SemanticIdRecommender, model_views
from recbole_macrec.registry import get_model, get_trainer
from recbole_macrec.results import effective_settings, result_record, settings_digest, write_result_file
from recbole_macrec.timing import PhaseTimer


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


class Fitted(NamedTuple):
    """What :func:`fit_and_test` returns."""
    trainer: object
    best_valid_score: float
    best_valid_result: dict
    test_result: dict
    timer: PhaseTimer
    recorder: TestRankRecorder


def check_settings(config, model_class):
    """Every setting error of the model, its trainer and its pre-stage, before any work."""
    from recbole_macrec import semantic_ids

    for checked in (model_class, get_trainer(config["MODEL_TYPE"], config["model"])):
        check = getattr(checked, "check_settings", None)
        if check is not None:
            check(config)
    if issubclass(model_class, SemanticIdRecommender):
        semantic_ids.check_settings(config)


def build_run(model, dataset=None, config_file_list=None, config_dict=None):
    """Config, seeded data and model of one run (a :class:`Run`); semantic-ID models get their
    semantic IDs first (the pre-stage runs if they are not cached), and RecBole reads the dataset
    the pre-stage wrote."""
    from recbole_macrec.semantic_ids import semantic_id_dataset

    model_class = get_model(model) if isinstance(model, str) else model
    config = Config(model=model_class, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    settings = effective_settings(config)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    if config["cpu_threads"]:
        logger.info(f"CPU process {global_rank(config)}: {config['cpu_threads']}")
    check_settings(config, model_class)
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


def fit_and_test(run, saved, started=None):
    """Train ``run``'s model with its registered trainer (resuming ``resume``'s state when set),
    then test the best epoch: a :class:`Fitted`. ``started``: when the run began (``time.time()``),
    for its wall clock."""
    config = run.config
    train_data, valid_data, test_data = run.loaders
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, run.model)
    trainer.run_identity = {"model": config["model"], "dataset": config["dataset"], "seed": config["seed"],
                            "settings_digest": settings_digest(run.settings)}
    if run.semantic_ids is not None:
        trainer.run_identity["semantic_ids"] = run.semantic_ids.codes_digest(config["dataset"])
        trainer.codes_folder = run.semantic_ids.data_path
    timer = PhaseTimer(trainer, started)
    if config["resume"]:
        if not hasattr(trainer, "resume_from"):
            raise SettingError(f"--resume: the trainer {type(trainer).__name__} keeps no resumable state")
        trainer.resume_from(str(config["resume"]))
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=saved,
                                                      show_progress=config["show_progress"])
    recorder = TestRankRecorder(trainer, run.dataset)
    load_best = saved and config["single_spec"]
    if saved and not config["single_spec"]:
        load_best_everywhere(trainer)
    test_result = timer.test(lambda: trainer.evaluate(test_data, load_best_model=load_best,
                                                      show_progress=config["show_progress"]))
    recorder.close()
    timer.close()
    if config["gr_beam_check"] and isinstance(run.model, SemanticIdRecommender):
        from recbole_macrec.beam_check import beam_check

        trainer.beam_check = beam_check(run.model, test_data, int(config["gr_beam_check"]))
        getLogger().info(set_color("beam vs exact", "yellow") + f": {trainer.beam_check}")
    return Fitted(trainer, best_valid_score, best_valid_result, test_result, timer, recorder)


def run_recbole(model, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None):
    """Train and test ``model`` (a name or a class) on ``dataset`` with RecBole's pipeline.

    Returns a dict with ``best_valid_result``, ``test_result`` (metric -> value), ``result_file`` and
    run facts (seed, epochs, wall time, machine).
    """
    start = time.time()
    logger = getLogger()
    run = build_run(model, dataset, config_file_list, config_dict)
    fitted = fit_and_test(run, saved, start)
    logger.info(set_color("best valid ", "yellow") + f": {fitted.best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {fitted.test_result}")
    result = result_record(run, fitted, config_file_list)
    code_level = code_level_result(run.config, run.dataset, run.model, fitted.recorder, run.semantic_ids)
    if code_level is not None:
        result["code_level"] = code_level
        logger.info(set_color("test result, code level", "yellow") + f": {code_level['test_result']}")
    result["wall_time_s"] = round(fitted.timer.wall_s(), 2)   # a resumed run: all its processes
    if global_rank(run.config) == 0:
        result["result_file"] = write_result_file(run.config, result, fitted.recorder.ranks())
        logger.info(set_color("results written to", "yellow") + f": {result['result_file']}")
    end_process_group(run.config)
    if queue is not None and global_rank(run.config) == 0:
        queue.put(result)
    return result


def run(model, dataset=None, config_file_list=None, config_dict=None, saved=True, nproc=1,
        world_size=-1, ip="localhost", port="5678", group_offset=0):
    """One process, or ``nproc`` processes through RecBole's torch-DDP path (GPUs with NCCL, or the
    CPU with gloo); ``world_size`` / ``ip`` / ``port`` / ``group_offset`` span several machines."""
    if nproc == 1 and world_size <= 0:
        return run_recbole(model, dataset, config_file_list, config_dict, saved)
    world = world_size if world_size > 0 else nproc
    model_class = get_model(model) if isinstance(model, str) else model
    config = Config(model=model_class, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    check_settings(config, model_class)
    check_distributed(config, nproc, world, ip, port, group_offset)
    return launch(run_recbole, model, dataset, config_file_list, config_dict, saved, nproc, world, ip, port,
                  group_offset)
