"""The epoch loop every run of this plugin trains with, the plugin's models and RecBole's built-ins
alike: RecBole's ``Trainer.fit`` (train, validate every ``eval_step`` epochs, early stopping
after ``stopping_step`` validations without improvement, the best epoch saved), plus

- a learning curve: per epoch the mean training loss, the learning rate at its start and end,
  the optimiser steps taken, its seconds and, when validated, the validation score and metrics;
- a resumable state after every epoch (``<checkpoint>.state.pth``: weights, optimiser,
  scheduler, every RNG, the loaders' order generators, early stopping, the curve, the timings),
  written atomically, so that a run killed at any point (SIGKILL included) continues from its
  last finished epoch with ``--resume`` and ends as the uninterrupted run would.

:func:`with_epoch_loop` gives a RecBole trainer class this loop.
"""
import glob
import os
import random
import shutil
import time

import numpy as np
import torch
from recbole.utils import set_color

from recbole_macrec.compat import trust_checkpoint
from recbole_macrec.distributed import global_rank
from recbole_macrec.errors import SettingError
from recbole_macrec.files import atomic_path, temp_dir

STATE_SUFFIX = ".state.pth"
STATE_FORMAT = 1


def state_path_of(checkpoint):
    """The resumable state file that belongs to the best-epoch checkpoint ``checkpoint``."""
    return os.path.splitext(checkpoint)[0] + STATE_SUFFIX


def codes_copy_of(state_file):
    """Where a run keeps the semantic-ID dataset it trains on, beside its state: a resume reads the
    codes from there, since the pre-stage's floats (hence its codes) differ across CPUs."""
    return state_file[: -len(STATE_SUFFIX)] + ".sid"


def keep_codes(folder, state_file):
    """Copy the pre-stage's output ``folder`` beside ``state_file`` once (atomically)."""
    target = codes_copy_of(state_file)
    if os.path.isdir(target) or os.path.abspath(folder) == os.path.abspath(target):
        return
    tmp = temp_dir(os.path.dirname(target), os.path.basename(target))
    shutil.copytree(folder, tmp, dirs_exist_ok=True)
    os.rename(tmp, target)


def rng_states():
    """Every global RNG's state, as tensors and numbers (loadable with ``weights_only``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "random": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    r = states["random"]
    random.setstate((r["version"], tuple(r["internal"]), r["gauss_next"]))


def find_state_file(path):
    """The state file ``--resume=path`` names: a state file, the best-epoch checkpoint beside
    one, or a folder (its newest state file)."""
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "*" + STATE_SUFFIX)), key=os.path.getmtime)
        if not found:
            raise SettingError(f"--resume={path}: the folder holds no run state (*{STATE_SUFFIX})")
        return found[-1]
    if path.endswith(STATE_SUFFIX):
        if not os.path.isfile(path):
            raise SettingError(f"--resume={path}: no such file")
        return path
    state = state_path_of(path)
    if not os.path.isfile(state):
        raise SettingError(f"--resume={path}: no run state {state} beside it (a run of this plugin writes "
                           f"one after every epoch)")
    return state


def read_state(path):
    """The saved state at ``path``; a clear error for a file that is truncated or not a state."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # truncated zip, not a torch file, foreign pickle
        raise SettingError(f"--resume={path}: not a readable run state ({type(err).__name__}: {err}); "
                           f"the file was left as it was") from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise SettingError(f"--resume={path}: not a run state of this plugin (format {STATE_FORMAT})")
    return state


def early_stopping_step(score, best, waited, patience, bigger=True):
    """``(best, waited, stop, improved)`` after a validation scoring ``score``: an improvement is a
    strictly better score (transformers' ``EarlyStoppingCallback``, which the released MACRec
    fine-tuning uses); training stops after ``patience`` validations in a row without one.
    (RecBole's ``early_stopping`` counts an equal score as an improvement, so a run whose score
    stopped moving, e.g. at learning rate 0, never stops; and it stops one validation later.)"""
    improved = score > best if bigger else score < best
    if improved:
        return score, 0, False, True
    waited += 1
    return best, waited, waited >= patience, False


class EpochLoop:
    """Mixed in front of a RecBole ``Trainer`` (see the module's docstring). Subclasses may
    override :meth:`before_training` (called once per ``fit``, before the first epoch),
    :meth:`order_generators` (the generators that decide batch order) and
    :meth:`scheduler_state` / :meth:`load_scheduler_state`."""

    def init_epoch_loop(self):
        self.curve = []
        self.stopped = False
        self.best_epoch = None
        self.timer = None            # a PhaseTimer attaches itself here
        self.steps_taken = 0
        self.optimizer.register_step_post_hook(self._count_step)
        self.state_file = state_path_of(self.saved_model_file)
        self.run_identity = None     # {model, dataset, seed, settings_digest[, semantic_ids]}: set by the runner
        self.codes_folder = None     # the semantic-ID dataset trained on, kept beside the state (runner)
        self._resume = None
        self.resumed_at_epoch = None

    def _count_step(self, optimizer, args, kwargs):
        self.steps_taken += 1

    # ---- hooks ---------------------------------------------------------------------------------
    def before_training(self, train_data, valid_data):
        """Called once per ``fit`` before the first epoch (a resumed run: before its state is
        loaded)."""

    def order_generators(self, train_data):
        """``{name: torch.Generator}`` whose states decide the batch order of later epochs."""
        generator = getattr(train_data, "generator", None)
        return {"train_data": generator} if isinstance(generator, torch.Generator) else {}

    def validation_extras(self, valid_data):
        """More numbers a validation records in the curve (``{name: value}``)."""
        return {}

    def scheduler_state(self):
        return None

    def load_scheduler_state(self, state):
        pass

    # ---- resume --------------------------------------------------------------------------------
    def resume_from(self, path):
        """Read the state ``path`` names (see :func:`find_state_file`) and check that it belongs to
        this run (model, dataset, seed, settings); ``fit`` then continues after its last epoch."""
        state_file = find_state_file(path)
        state = read_state(state_file)
        identity = self.run_identity or {}
        for key in ("model", "dataset", "seed", "settings_digest"):
            if key in identity and state["identity"].get(key) != identity[key]:
                raise SettingError(
                    f"--resume={path}: {state_file} is a run of {key} {state['identity'].get(key)!r}, this run "
                    f"has {identity[key]!r}" + (" (other settings)" if key == "settings_digest" else "")
                    + "; the file was left as it was")
        self.check_resumed_codes(state_file, state["identity"], identity)
        best = state["best_checkpoint"]
        beside = best and os.path.join(os.path.dirname(state_file), os.path.basename(best))
        if best is not None and not os.path.isfile(best) and os.path.isfile(beside):
            best = beside   # the folder was moved (another checkout or machine): its paths are absolute
        if best is not None and not os.path.isfile(best):
            raise SettingError(f"--resume={path}: its best-epoch checkpoint {best} is missing")
        self._resume = state
        self.state_file = state_file
        if best is not None:
            self.saved_model_file = best
            trust_checkpoint(best)   # this run's own: its test loads it as RecBole loads a checkpoint
        self.epochs, self.eval_step = state["epochs"], state["eval_step"]
        self.config["epochs"], self.config["eval_step"] = state["epochs"], state["eval_step"]
        self.start_epoch = state["epoch"] + 1
        self.logger.info(set_color("resuming", "yellow") + f" {state_file}: epoch {self.start_epoch} of "
                         f"{self.epochs}" + (" (training had ended)" if state["stopped"] else ""))

    def check_resumed_codes(self, state_file, saved, identity):
        """Refuse to resume on other semantic IDs than the first part trained on (same settings can
        give other codes on another CPU); a state written before codes were recorded is resumed
        with a warning."""
        if "semantic_ids" not in identity:
            return
        if "semantic_ids" not in saved:
            self.logger.warning(f"{state_file} does not record its semantic IDs: resuming without checking "
                                f"that they are the ones its first part trained on")
        elif saved["semantic_ids"] != identity["semantic_ids"]:
            raise SettingError(f"--resume: {state_file} was trained on other semantic IDs than this run's "
                               f"(.item sha256 {saved['semantic_ids'][:12]}, this run {identity['semantic_ids'][:12]}); "
                               f"its kept codes {codes_copy_of(state_file)} are missing and the pre-stage's "
                               f"codes differ across CPUs; start anew (or restore them); the file was left as it was")

    def _apply_resume(self, train_data):
        state, self._resume = self._resume, None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_scheduler_state(state["scheduler"])
        es = state["early_stopping"]
        self.best_valid_score, self.cur_step = es["best_valid_score"], es["cur_step"]
        self.best_valid_result, self.best_epoch = es["best_valid_result"], es["best_epoch"]
        self.stopped, self.curve, self.steps_taken = state["stopped"], state["curve"], state["steps_taken"]
        self.train_loss_dict = {int(k): v for k, v in state["train_loss"].items()}
        if state["budget_plan"] is not None:
            self.budget_plan = state["budget_plan"]
        if self.timer is not None:
            self.timer.load(state["timing"])
        for name, generator in self.order_generators(train_data).items():
            generator.set_state(state["order_generators"][name])
        set_rng_states(state["rng"])
        self.resumed_at_epoch = self.start_epoch

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """The best epoch's weights, written atomically (a run killed while writing keeps the
        previous best), without RecBole's pickled ``Config``."""
        if global_rank(self.config) != 0:
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {"epoch": epoch, "cur_step": self.cur_step, "best_valid_score": float(self.best_valid_score),
                 "state_dict": self.model.state_dict(), "other_parameter": self.model.other_parameter(),
                 "optimizer": self.optimizer.state_dict()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        trust_checkpoint(path)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {path}")

    def save_state(self, epoch_idx, train_data):
        """Write the resumable state after ``epoch_idx`` (first process only, atomically)."""
        if global_rank(self.config) != 0:
            return
        state = {
            "format": STATE_FORMAT,
            "identity": dict(self.run_identity or {}),
            "epoch": epoch_idx, "epochs": self.epochs, "eval_step": self.eval_step, "stopped": self.stopped,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler_state(),
            "early_stopping": {"best_valid_score": float(self.best_valid_score), "cur_step": self.cur_step,
                               "best_valid_result": {k: float(v) for k, v in (self.best_valid_result or {}).items()},
                               "best_epoch": self.best_epoch},
            "best_checkpoint": self.saved_model_file if os.path.isfile(self.saved_model_file) else None,
            "curve": self.curve, "steps_taken": self.steps_taken,
            "train_loss": {str(k): float(v) for k, v in self.train_loss_dict.items()},
            "timing": self.timer.state() if self.timer is not None else None,
            "budget_plan": getattr(self, "budget_plan", None),
            "order_generators": {name: g.get_state() for name, g in self.order_generators(train_data).items()},
            "rng": rng_states(),
        }
        with atomic_path(self.state_file) as tmp:
            torch.save(state, tmp)
        if self.codes_folder is not None:
            keep_codes(self.codes_folder, self.state_file)

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.before_training(train_data, valid_data)
        if self._resume is not None:
            self._apply_resume(train_data)
        self.eval_collector.data_collect(train_data)
        if self.config["train_neg_sample_args"].get("dynamic", False):
            train_data.get_model(self.model)
        validates = self.eval_step > 0 and bool(valid_data)
        for epoch_idx in range(self.start_epoch, self.epochs):
            if self.stopped:
                break
            record = self.train_and_record(train_data, epoch_idx, show_progress, verbose)
            if validates and (epoch_idx + 1) % self.eval_step == 0:
                self.validate_and_select(valid_data, epoch_idx, record, saved, show_progress, verbose, callback_fn)
            elif not validates and saved:
                self._save_checkpoint(epoch_idx, verbose=verbose)
            self.curve.append(record)
            if saved:
                self.save_state(epoch_idx, train_data)
        if not validates and self.best_epoch is None and self.curve:
            self.best_epoch = self.curve[-1]["epoch"]
        self._add_hparam_to_tensorboard(self.best_valid_score)
        return self.best_valid_score, self.best_valid_result

    def current_lr(self):
        return float(self.optimizer.param_groups[0]["lr"])

    def train_and_record(self, train_data, epoch_idx, show_progress, verbose):
        lr_start, steps_before = self.current_lr(), self.steps_taken
        start = time.time()
        train_loss = self._train_epoch(train_data, epoch_idx, show_progress=show_progress)
        end = time.time()
        total = sum(train_loss) if isinstance(train_loss, tuple) else train_loss
        self.train_loss_dict[epoch_idx] = total
        if verbose:
            self.logger.info(self._generate_train_loss_output(epoch_idx, start, end, train_loss))
        self._add_train_loss_to_tensorboard(epoch_idx, train_loss)
        self.wandblogger.log_metrics({"epoch": epoch_idx, "train_loss": train_loss, "train_step": epoch_idx},
                                     head="train")
        steps = self.steps_taken - steps_before
        batches = len(self.epoch_batches(train_data))
        return {"epoch": epoch_idx, "train_loss": float(total) / max(1, batches), "lr_start": lr_start,
                "lr_end": self.current_lr(), "steps": steps, "seconds": round(end - start, 3)}

    def epoch_batches(self, train_data):
        """What one epoch iterates (its length is the epoch's number of batches)."""
        return train_data

    def validate_and_select(self, valid_data, epoch_idx, record, saved, show_progress, verbose, callback_fn):
        start = time.time()
        valid_score, valid_result = self._valid_epoch(valid_data, show_progress=show_progress)
        self.best_valid_score, self.cur_step, stop, improved = early_stopping_step(
            valid_score, self.best_valid_score, self.cur_step, self.stopping_step, self.valid_metric_bigger)
        record["valid_score"] = float(valid_score)
        record["valid_result"] = {k: float(v) for k, v in valid_result.items()}
        record.update(self.validation_extras(valid_data))
        if verbose:
            self.logger.info(set_color("epoch %d evaluating", "green") % epoch_idx
                             + f" [{set_color('time', 'blue')}: {time.time() - start:.2f}s, "
                             + f"{set_color('valid_score', 'blue')}: {valid_score:f}]")
            self.logger.info(set_color("valid result", "blue") + ": \n"
                             + " ".join(f"{k} : {v}" for k, v in valid_result.items()))
        self.tensorboard.add_scalar("Vaild_score", valid_score, epoch_idx)
        if improved:
            if saved:
                self._save_checkpoint(epoch_idx, verbose=verbose)
            self.best_valid_result, self.best_epoch = valid_result, epoch_idx
        if callback_fn:
            callback_fn(epoch_idx, valid_score)
        if stop:
            self.stopped = True
            record["early_stopped"] = True
            if verbose:
                self.logger.info(f"Finished training, best eval result in epoch {self.best_epoch}")


_WITH_LOOP = {}


def with_epoch_loop(trainer_class):
    """``trainer_class`` with :class:`EpochLoop`'s ``fit`` (itself when it has it already); a
    trainer whose own ``fit`` differs from RecBole's ``Trainer.fit`` is returned unchanged."""
    from recbole.trainer import Trainer

    if issubclass(trainer_class, EpochLoop) or trainer_class.fit is not Trainer.fit:
        return trainer_class
    if trainer_class not in _WITH_LOOP:
        def __init__(self, config, model):
            trainer_class.__init__(self, config, model)
            self.init_epoch_loop()

        _WITH_LOOP[trainer_class] = type(trainer_class.__name__, (EpochLoop, trainer_class),
                                         {"__init__": __init__, "__module__": __name__})
    return _WITH_LOOP[trainer_class]
