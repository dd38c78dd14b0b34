import pytest
import torch

from conftest import build_model, write_codes
from recbole_macrec.data.device_loader import LengthGroupedLoader, device_loader_applies


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
    assert isinstance(trainer.device_loader, LengthGroupedLoader) and trainer.device_loader.source is data[0]
    config["gr_length_group"] = 0
    assert GenerativeTrainer(config, model).batches_of(data[0]) is data[0]
    config["gr_length_group"], config["single_spec"] = 4, False   # DDP: RecBole's sharded loader
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
