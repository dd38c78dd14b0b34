"""Training batches straight from the device, grouped by history length.

RecBole's ``TrainDataLoader`` collates every batch on the CPU (a numpy index into the training
Interaction, a join with item features, a copy to the device). For the generative models a
batch is padded to its longest history, so random batches from a long-tailed length distribution
are mostly padding. :class:`LengthGroupedLoader` holds the (joined) training Interaction on the
device once and, each epoch, draws a seeded random permutation, sorts it by history length within
mega-batches of ``group`` batches and shuffles the resulting batches (the ``group_by_length`` idea
of fairseq / HF Trainer). Every training row appears exactly once per epoch, as with RecBole's loader.

:class:`TaskMixtureLoader` makes the epochs of the released MACRec / MQL4GRec fine-tuning: the
rows of several tasks concatenated and shuffled together, each history task holding one row per
training row and each item task one row per catalogue item; history rows are grouped the same
way and item rows dealt evenly over the batches (a shuffled mixture's share of them per step).
"""
import torch

TASK_FIELD = "gr_task"   # a mixture batch's per-row task (index into the model's task list)


def grouped_order(lengths, batch_size, group, generator):
    """A seeded permutation of the rows with source ``lengths [n]``, sorted by length within
    mega-batches of ``group`` batches of ``batch_size`` rows (``group`` 1: a plain permutation)."""
    n = len(lengths)
    perm = torch.randperm(n, generator=generator).to(lengths.device)
    if group > 1:
        # One stable sort by (mega-batch, length): equal lengths keep their random order.
        sorted_lengths = lengths[perm]
        mega = torch.arange(n, device=perm.device) // (batch_size * group)
        perm = perm[torch.sort(mega * (int(sorted_lengths.max()) + 1) + sorted_lengths, stable=True).indices]
    return perm


def shuffled(batches, generator):
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def grouped_batches(lengths, batch_size, group, generator):
    """One epoch's batches over rows with source ``lengths [n]``: a list of row-index tensors
    ``[<= batch_size]``. A seeded permutation is sorted by length within mega-batches of ``group``
    batches (mega-batches are whole batches, so no batch mixes two of them), then the batches are
    shuffled."""
    return shuffled(list(torch.split(grouped_order(lengths, batch_size, group, generator), batch_size)), generator)


def spread_batches(lengths, spread, batch_size, group, generator):
    """One epoch's batches as :func:`grouped_batches` gives them for the rows not in ``spread``
    (a bool mask ``[n]``), with the ``spread`` rows dealt evenly over the batches in a random
    order, and each batch's rows in a random order: every batch holds the share of ``spread``
    rows that a shuffle of all rows gives on average (within one row), instead of their gathering
    in the few batches of their length."""
    n = len(lengths)
    count = -(-n // batch_size)
    sizes = torch.full((count,), n // count).add_(torch.arange(count) < n % count)   # as even as can be
    grouped_rows = torch.nonzero(~spread).view(-1)
    spread_rows = torch.nonzero(spread).view(-1)
    dealt = spread_rows[torch.randperm(len(spread_rows), generator=generator).to(lengths.device)]
    dealt = dealt.tensor_split(count)
    grouped_sizes = (sizes - torch.tensor([len(d) for d in dealt])).tolist()
    order = grouped_rows[grouped_order(lengths[grouped_rows], max(1, max(grouped_sizes)), group, generator)]
    batches = []
    for a, b in zip(torch.split(order, grouped_sizes), dealt):
        rows = torch.cat([a, b])
        batches.append(rows[torch.randperm(len(rows), generator=generator).to(lengths.device)])
    return shuffled(batches, generator)


class LengthGroupedLoader:
    """Iterable of device-resident training batches (``Interaction``), one epoch per ``iter``.

    ``train_data``: RecBole's TrainDataLoader (no negative sampling, no transform); ``group``:
    batches per length-sorted mega-batch (1 = plain random batches); ``seed``: the epoch
    permutations are a function of the seed and the number of epochs drawn so far."""

    def __init__(self, train_data, device, length_field, group=50, seed=0, batch_size=None, rank=0,
                 world_size=1):
        self.source = train_data
        dataset = train_data._dataset
        self.data = dataset.join(dataset.inter_feat).to(device)
        self.length = self.data[length_field]
        self.batch_size = int(batch_size or train_data.step)
        self.group = max(1, int(group))
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))
        self.rank, self.world_size = int(rank), int(world_size)

    def row_lengths(self):
        """Source length ``[rows]`` of every row an epoch holds."""
        return self.length

    def __len__(self):
        n = len(self.row_lengths())
        batches, last = -(-n // self.batch_size), n % self.batch_size
        merged = self.world_size > 1 and batches > 1 and 0 < last < self.world_size and not self.spreads()
        return batches - merged

    def spreads(self):
        """True when an epoch's batches come from :func:`spread_batches`."""
        return False

    def epoch_batches(self):
        return grouped_batches(self.row_lengths(), self.batch_size, self.group, self.generator)

    def epoch_order(self):
        """The batches of one epoch: a list of row-index tensors ``[<= batch_size]``; with
        ``world_size > 1`` this rank's share of each (every rank draws the same order from the
        same seed and takes a disjoint slice of every batch, so the ranks together cover the
        epoch once and take the same number of steps)."""
        batches = self.epoch_batches()
        if self.world_size == 1:
            return batches
        if len(batches) > 1 and len(batches[-1]) < self.world_size:   # too small to give every rank a row
            batches = batches[:-2] + [torch.cat(batches[-2:])]
        return [batch.tensor_split(self.world_size)[self.rank] for batch in batches]

    def batch(self, rows):
        return self.data[rows]

    def __iter__(self):
        for rows in self.epoch_order():
            yield self.batch(rows)


class TaskMixtureLoader(LengthGroupedLoader):
    """Epochs of a task mixture: ``tasks`` is the model's list of ``(name, kind)``; a ``"seq"``
    task holds one row per training row (its history and target item), an ``"item"`` (or
    ``"pair"``) task one row per catalogue item (internal ids ``1 .. n_items - 1``). A batch is an ``Interaction``
    with the history, its length and the target item per row (an item row: no history, length 0,
    the item as target) and :data:`TASK_FIELD`, the row's index in ``tasks``."""

    def __init__(self, train_data, device, fields, tasks, n_items, group=50, seed=0, batch_size=None, rank=0,
                 world_size=1):
        super().__init__(train_data, device, fields["length"], group, seed, batch_size, rank, world_size)
        self.fields = fields
        task_of, index, lengths = [], [], []
        n_train = len(self.data)
        for t, (_, kind) in enumerate(tasks):
            if kind == "seq":
                rows = torch.arange(n_train, device=self.length.device)
                lengths.append(self.length)
            else:   # "item" and "pair": one row per catalogue item
                rows = torch.arange(1, n_items, device=self.length.device)
                lengths.append(torch.ones_like(rows))
            index.append(rows)
            task_of.append(torch.full_like(rows, t))
        self.task_of, self.index = torch.cat(task_of), torch.cat(index)
        self.lengths = torch.cat(lengths)
        self.is_item = torch.tensor([kind != "seq" for _, kind in tasks], device=self.length.device)

    def row_lengths(self):
        return self.lengths

    def spreads(self):
        # grouping by length would gather the (length-1) item rows into a few batches
        return self.group > 1 and bool(self.is_item.any()) and not bool(self.is_item.all())

    def epoch_batches(self):
        if not self.spreads():
            return super().epoch_batches()
        return spread_batches(self.lengths, self.is_item[self.task_of], self.batch_size, self.group, self.generator)

    def batch(self, rows):
        from recbole.data.interaction import Interaction

        task, index = self.task_of[rows], self.index[rows]
        item_row = self.is_item[task]
        history_row = torch.where(item_row, 0, index)
        seq = self.data[self.fields["seq"]][history_row].masked_fill(item_row[:, None], 0)
        length = self.length[history_row].masked_fill(item_row, 0)
        target = torch.where(item_row, index, self.data[self.fields["item"]][history_row])
        return Interaction({self.fields["seq"]: seq, self.fields["length"]: length,
                            self.fields["item"]: target, TASK_FIELD: task})


def device_loader_applies(config, train_data):
    """True when the training loader is a plain one: no negative sampling, no batch transform
    (one process or several: each rank then takes its slice of every batch)."""
    neg = getattr(train_data, "neg_sample_args", None) or {}
    return config["transform"] is None \
        and neg.get("distribution", "none") == "none" \
        and hasattr(train_data, "_dataset") and hasattr(train_data, "step")
