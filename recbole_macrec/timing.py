"""Wall-clock timing that includes the device's queued work: the runner's per-phase timings, the
trainer's budget probe and the benchmarks use it."""
import time

import torch


def synchronize(device):
    """Wait for the device's queued work (CUDA runs asynchronously), so that a clock read after it
    includes that work; a no-op on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Wall seconds of every training epoch and validation pass of ``trainer`` (device work
    included: CUDA is synchronised before the clock stops), and of the test; and, for a resumed run,
    the wall seconds its earlier processes spent up to their last saved state (``earlier_wall_s``;
    an epoch cut off by the kill is not in it), so that a run's wall time covers all its parts.
    ``started``: when this process began the run (``time.time()``; default now)."""

    def __init__(self, trainer, started=None):
        self.trainer = trainer
        self.started = time.time() if started is None else started
        self.train_epoch_s, self.valid_s, self.test_s = [], [], None
        self.earlier_wall_s = None
        self._train, self._valid = trainer._train_epoch, trainer._valid_epoch
        trainer._train_epoch = self.timed(self._train, self.train_epoch_s)
        trainer._valid_epoch = self.timed(self._valid, self.valid_s)
        trainer.timer = self   # a resumable trainer saves and restores the seconds of earlier epochs

    def timed(self, fn, seconds):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            synchronize(self.trainer.device)
            seconds.append(round(time.perf_counter() - start, 3))
            return out

        return wrapper

    def test(self, evaluate):
        """Run ``evaluate()`` (the test pass), timing it; returns its result."""
        start = time.perf_counter()
        result = evaluate()
        synchronize(self.trainer.device)
        self.test_s = round(time.perf_counter() - start, 3)
        return result

    def wall_s(self):
        """Wall seconds of the run so far, earlier processes of a resumed run included."""
        return (self.earlier_wall_s or 0.0) + time.time() - self.started

    def state(self):
        return {"train_epoch_s": list(self.train_epoch_s), "valid_s": list(self.valid_s),
                "wall_s": round(self.wall_s(), 3)}

    def load(self, state):
        """Continue the lists and the wall clock of a resumed run (``state``: what :meth:`state`
        returned). A state written before states kept the clock gives the seconds of its epochs and
        validations instead: a lower bound (its process's set-up is not in it)."""
        if state:
            self.train_epoch_s[:] = state["train_epoch_s"]
            self.valid_s[:] = state["valid_s"]
            earlier = state.get("wall_s")
            if earlier is None:
                earlier = sum(self.train_epoch_s) + sum(self.valid_s)
            self.earlier_wall_s = earlier

    def summary(self):
        summary = {"train_epoch_s": self.train_epoch_s, "valid_s": self.valid_s, "test_s": self.test_s}
        if self.earlier_wall_s is not None:
            summary["wall_s_before_resume"] = round(self.earlier_wall_s, 3)
        return summary

    def close(self):
        self.trainer._train_epoch, self.trainer._valid_epoch = self._train, self._valid
