"""Training batches straight from the device, grouped by history length.

RecBole's ``TrainDataLoader`` collates every batch on the CPU (a numpy index into the training
Interaction, a join with item features, a copy to the device). For the generative models a
batch is padded to its longest history, so random batches from a long-tailed length distribution
are mostly padding. :class:`LengthGroupedLoader` holds the (joined) training Interaction on the
device once and, each epoch, draws a seeded random permutation, sorts it by history length within
mega-batches of ``group`` batches and shuffles the resulting batches (the ``group_by_length`` idea
of fairseq / HF Trainer). Every training row appears exactly once per epoch, as with RecBole's loader.
"""
import torch


class LengthGroupedLoader:
    """Iterable of device-resident training batches (``Interaction``), one epoch per ``iter``.

    ``train_data``: RecBole's TrainDataLoader (no negative sampling, no transform); ``group``:
    batches per length-sorted mega-batch (1 = plain random batches); ``seed``: the epoch
    permutations are a function of the seed and the number of epochs drawn so far."""

    def __init__(self, train_data, device, length_field, group=50, seed=0):
        self.source = train_data
        dataset = train_data._dataset
        self.data = dataset.join(dataset.inter_feat).to(device)
        self.length = self.data[length_field]
        self.batch_size = int(train_data.step)
        self.group = max(1, int(group))
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))

    def __len__(self):
        return -(-len(self.data) // self.batch_size)

    def epoch_order(self):
        """The batches of one epoch: a list of row-index tensors ``[<= batch_size]``. Mega-batches
        are whole batches, so no batch mixes two of them."""
        n = len(self.data)
        perm = torch.randperm(n, generator=self.generator).to(self.length.device)
        if self.group > 1:
            # One stable sort by (mega-batch, length): equal lengths keep their random order.
            lengths = self.length[perm]
            mega = torch.arange(n, device=perm.device) // (self.batch_size * self.group)
            perm = perm[torch.sort(mega * (int(lengths.max()) + 1) + lengths, stable=True).indices]
        batches = list(torch.split(perm, self.batch_size))
        shuffle = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[i] for i in shuffle]

    def __iter__(self):
        for index in self.epoch_order():
            yield self.data[index]


def device_loader_applies(config, train_data):
    """True when the training loader is a plain one: one process (DDP shards need RecBole's
    distributed sampler), no negative sampling, no batch transform."""
    neg = getattr(train_data, "neg_sample_args", None) or {}
    return config["single_spec"] and config["transform"] is None \
        and neg.get("distribution", "none") == "none" \
        and hasattr(train_data, "_dataset") and hasattr(train_data, "step")
