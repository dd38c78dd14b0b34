
import pytest
import torch

from conftest import build_model, write_codes
from recbole_macrec.data.device_loader import LengthGroupedLoader, TaskMixtureLoader, device_loader_applies


@pytest.fixture
def tiger_data(tiny_dataset):
    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model("TIGER", tiny_dataset, train_batch_size=8)
    return model, config, data


def _epoch(loader):
    return [batch for batch in loader]


def test_every_training_row_once_per_epoch_with_the_same_fields(tiger_data):
    _, config, data = tiger_data
    loader = LengthGroupedLoader(data[0], "cpu", config["ITEM_LIST_LENGTH_FIELD"], group=3, seed=1)
    recbole_rows = torch.cat([b[config["ITEM_ID_FIELD"]] for b in data[0]])
    for _ in range(2):
        batches = _epoch(loader)
        assert len(batches) == len(loader) == len(data[0])
        items = torch.cat([b[config["ITEM_ID_FIELD"]] for b in batches])
        assert sorted(items.tolist()) == sorted(recbole_rows.tolist())
        # rows stay whole: each (history, target) pair is one of RecBole's training rows
        assert set(next(iter(data[0])).interaction) <= set(batches[0].interaction)


def test_batches_of_a_group_do_not_overlap_in_length(tiger_data):
    _, config, data = tiger_data
    field = config["ITEM_LIST_LENGTH_FIELD"]
    n_batches = len(data[0])
    loader = LengthGroupedLoader(data[0], "cpu", field, group=n_batches, seed=3)
    ranges = sorted((int(b[field].min()), int(b[field].max())) for b in _epoch(loader))
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:]))
    # plain random batches (group 1) do overlap on this data: the test above can fail
    random = LengthGroupedLoader(data[0], "cpu", field, group=1, seed=3)
    ranges = sorted((int(b[field].min()), int(b[field].max())) for b in _epoch(random))
    assert any(hi > next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:]))


def test_order_is_a_function_of_seed_and_epoch(tiger_data):
    _, config, data = tiger_data
    field, item = config["ITEM_LIST_LENGTH_FIELD"], config["ITEM_ID_FIELD"]
    order = lambda loader: [b[item].tolist() for b in _epoch(loader)]
    a = LengthGroupedLoader(data[0], "cpu", field, seed=5)
    b = LengthGroupedLoader(data[0], "cpu", field, seed=5)
    first = order(a)
    assert first == order(b)
    assert order(a) != first            # the next epoch is a new permutation
    assert order(LengthGroupedLoader(data[0], "cpu", field, seed=6)) != first


def test_trainer_trains_from_the_device_loader(tiger_data):
    from recbole_macrec.trainer.generative_trainer import GenerativeTrainer

    model, config, data = tiger_data
    assert device_loader_applies(config, data[0])
    config["gr_length_group"] = 4
    trainer = GenerativeTrainer(config, model)
    trainer.fit(data[0], saved=False)
    assert isinstance(trainer.device_loader, TaskMixtureLoader) and trainer.device_loader.source is data[0]
    assert trainer.device_loader.group == 4
    config["gr_length_group"] = 0      # the mixture's batches without length grouping
    assert GenerativeTrainer(config, model).batches_of(data[0]).group == 1
    model.task_mix, config["gr_length_group"] = "per_batch", 4
    assert type(GenerativeTrainer(config, model).batches_of(data[0])) is LengthGroupedLoader
    config["gr_length_group"] = 0
    assert GenerativeTrainer(config, model).batches_of(data[0]) is data[0]
    config["single_spec"] = False                 # several processes: each rank takes its slice
    assert device_loader_applies(config, data[0])
    config["transform"] = "mask_itemseq"          # a batch transform: RecBole's loader
    assert not device_loader_applies(config, data[0])


def _trained_weights(tiny_dataset, seed):
    from recbole_macrec.trainer.generative_trainer import GenerativeTrainer

    model, config, data = build_model("TIGER", tiny_dataset, train_batch_size=8, seed=seed, epochs=1)
    GenerativeTrainer(config, model).fit(data[0], saved=False)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_training_from_the_device_loader_is_reproducible_from_the_seed(tiny_dataset):
    write_codes(tiny_dataset / "tiny")
    first = _trained_weights(tiny_dataset, 7)
    assert torch.equal(first, _trained_weights(tiny_dataset, 7))
    assert not torch.equal(first, _trained_weights(tiny_dataset, 8))


def _macrec(tiny_dataset, **extra):
    write_codes(tiny_dataset / "tiny")
    return build_model("MACRec", tiny_dataset, train_batch_size=16, **extra)


def _mixture_loader(model, config, data, group=4, seed=1):
    from recbole_macrec.data.device_loader import TaskMixtureLoader

    fields = {"seq": model.ITEM_SEQ, "length": model.ITEM_SEQ_LEN, "item": model.POS_ITEM_ID}
    return TaskMixtureLoader(data[0], "cpu", fields, model.task_mixture(), model.n_items, group=group, seed=seed)


def test_mixture_epoch_holds_every_training_row_per_history_task_and_every_item_per_item_task(tiny_dataset):
    from recbole_macrec.data.device_loader import TASK_FIELD

    model, config, data = _macrec(tiny_dataset)
    mixture = model.task_mixture()
    assert [kind for _, kind in mixture] == ["seq", "seq", "item", "item", "seq", "seq"]
    loader = _mixture_loader(model, config, data)
    train = data[0]._dataset.inter_feat
    train_rows = sorted(zip(train[model.ITEM_SEQ_LEN].tolist(), train[model.POS_ITEM_ID].tolist(),
                            map(tuple, train[model.ITEM_SEQ].tolist())))
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader) and all(len(b) <= 16 for b in batches)
        per_task = {t: [] for t in range(len(mixture))}
        for b in batches:
            for t, length, item, seq in zip(b[TASK_FIELD].tolist(), b[model.ITEM_SEQ_LEN].tolist(),
                                            b[model.POS_ITEM_ID].tolist(), map(tuple, b[model.ITEM_SEQ].tolist())):
                per_task[t].append((length, item, seq))
        for t, (_, kind) in enumerate(mixture):
            if kind == "seq":
                assert sorted(per_task[t]) == train_rows
            else:   # each catalogue item exactly once, with no history
                assert sorted(item for _, item, _ in per_task[t]) == list(range(1, model.n_items))
                assert all(length == 0 and not any(seq) for length, _, seq in per_task[t])


def test_single_history_task_mixture_is_the_length_grouped_epoch(tiger_data):
    model, config, data = tiger_data
    assert model.task_mixture() == [("seqrec", "seq")]
    mixture = _mixture_loader(model, config, data, group=3, seed=2)
    plain = LengthGroupedLoader(data[0], "cpu", config["ITEM_LIST_LENGTH_FIELD"], group=3, seed=2)
    for a, b in zip(_epoch(mixture), _epoch(plain)):
        for field in (model.ITEM_SEQ, model.ITEM_SEQ_LEN, model.POS_ITEM_ID):
            assert torch.equal(a[field], b[field])


def test_tiger_trains_the_same_under_both_task_mixes(tiny_dataset):
    """One task: the released mixture's epoch and loss are today's (token mean = row mean)."""
    from recbole_macrec.trainer.generative_trainer import GenerativeTrainer

    write_codes(tiny_dataset / "tiny")
    weights = {}
    for mix in ("released", "per_batch"):
        model, config, data = build_model("TIGER", tiny_dataset, train_batch_size=8, gr_task_mix=mix, epochs=2)
        GenerativeTrainer(config, model).fit(data[0], saved=False)
        weights[mix] = model.state_dict()
    for name, value in weights["released"].items():
        torch.testing.assert_close(value, weights["per_batch"][name], rtol=1e-4, atol=1e-5)


def test_released_mixture_needs_the_device_loader(tiny_dataset):
    from recbole_macrec.trainer.generative_trainer import GenerativeTrainer

    model, config, data = _macrec(tiny_dataset)
    config["transform"] = "mask_itemseq"
    with pytest.raises(ValueError, match="gr_task_mix: released builds its epochs on the device"):
        GenerativeTrainer(config, model).batches_of(data[0])


@pytest.mark.parametrize("mixture", [False, True])
def test_ranks_take_disjoint_slices_of_every_batch_that_together_are_the_epoch(tiny_dataset, mixture):
    from recbole_macrec.data.device_loader import TASK_FIELD

    model, config, data = _macrec(tiny_dataset)
    field = config["ITEM_LIST_LENGTH_FIELD"]

    def loader(rank, world):
        if mixture:
            fields = {"seq": model.ITEM_SEQ, "length": model.ITEM_SEQ_LEN, "item": model.POS_ITEM_ID}
            return TaskMixtureLoader(data[0], "cpu", fields, model.task_mixture(), model.n_items, group=3, seed=4,
                                     batch_size=16, rank=rank, world_size=world)
        return LengthGroupedLoader(data[0], "cpu", field, group=3, seed=4, batch_size=16, rank=rank, world_size=world)

    whole = loader(0, 1).epoch_order()
    shards = [loader(rank, 2).epoch_order() for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(loader(0, 2)) <= len(whole)
    rows = [torch.cat(shard).tolist() for shard in shards]
    assert not set(rows[0]) & set(rows[1])
    assert sorted(rows[0] + rows[1]) == sorted(torch.cat(whole).tolist())
    assert all(len(a) > 0 and abs(len(a) - len(b)) <= 1 for a, b in zip(*shards))
    if mixture:
        batch = next(iter(loader(1, 2)))
        assert TASK_FIELD in batch


def test_mixture_steps_each_hold_the_item_rows_share_of_a_shuffle(tiny_dataset):
    """Length grouping alone would gather the length-1 item rows into a few steps; every step
    must hold its share of them (within one row), as a shuffled mixture does on average."""
    from recbole_macrec.data.device_loader import TASK_FIELD, TaskMixtureLoader

    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model("MACRec", tiny_dataset, train_batch_size=16)
    fields = {"seq": model.ITEM_SEQ, "length": model.ITEM_SEQ_LEN, "item": model.POS_ITEM_ID}
    loader = TaskMixtureLoader(data[0], "cpu", fields, model.task_mixture(), model.n_items, group=50, seed=3,
                               batch_size=16)
    is_item = torch.tensor([kind != "seq" for _, kind in model.task_mixture()])
    batches = list(loader)
    counts = [int(is_item[b[TASK_FIELD]].sum()) for b in batches]
    share = sum(counts) / sum(len(b) for b in batches)
    assert sum(counts) == 2 * (model.n_items - 1)
    assert all(abs(c - share * len(b)) <= 1 for c, b in zip(counts, batches))
    assert all(len(b) <= 16 for b in batches) and len(batches) == len(loader)
    # the history rows are still grouped by length: fewer padded positions than a plain shuffle
    plain = TaskMixtureLoader(data[0], "cpu", fields, model.task_mixture(), model.n_items, group=1, seed=3,
                              batch_size=16)

    def padding(epoch):
        return sum(int(b[model.ITEM_SEQ_LEN].max()) * len(b) - int(b[model.ITEM_SEQ_LEN].sum()) for b in epoch)

    assert padding(batches) < padding(list(plain))
