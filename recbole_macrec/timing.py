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
    included: CUDA is synchronised before the clock stops), and of the test."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.train_epoch_s, self.valid_s, self.test_s = [], [], None
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

    def state(self):
        return {"train_epoch_s": list(self.train_epoch_s), "valid_s": list(self.valid_s)}

    def load(self, state):
        """Continue the lists of a resumed run (``state``: what :meth:`state` returned)."""
        if state:
            self.train_epoch_s[:] = state["train_epoch_s"]
            self.valid_s[:] = state["valid_s"]

    def summary(self):
        return {"train_epoch_s": self.train_epoch_s, "valid_s": self.valid_s, "test_s": self.test_s}

    def close(self):
        self.trainer._train_epoch, self.trainer._valid_epoch = self._train, self._valid
