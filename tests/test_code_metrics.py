"""Code-level metrics: computed as the released evaluation compares published codes."""
import json

import numpy as np
import pytest
import torch

from conftest import TINY_T5, tiny_config_dict, write_codes
from recbole_macrec.code_metrics import code_level_ranks, metrics_from_ranks


def test_code_level_ranks_on_a_hand_made_colliding_catalogue():
    # items 1 and 2 share a published code (group 0); items 3, 4, 5 have their own
    groups = torch.tensor([-1, 0, 0, 1, 2, 3])
    top = torch.tensor([[2, 3, 1, 4],      # target 1: its code's group is ranked first (via item 2)
                        [1, 2, 3, 4],      # target 3: item 2 repeats group 0, so item 3 is rank 2
                        [5, 4, 3, 1],      # target 2: found through item 1 at rank 4
                        [3, 4, 5, 3]])     # target 1: not in the list
    targets = torch.tensor([1, 3, 2, 1])
    assert code_level_ranks(top, targets, groups).tolist() == [1, 2, 4, 0]
    exact_ranks = [3, 3, 0, 0]             # RecBole's item-level ranks of the same lists
    m = metrics_from_ranks(code_level_ranks(top, targets, groups), [1, 2])
    assert m["hit@1"] == 0.25 and m["hit@2"] == 0.5
    assert m["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    assert exact_ranks != code_level_ranks(top, targets, groups).tolist()


def test_without_collisions_code_level_equals_item_level():
    rng = np.random.default_rng(0)
    top = torch.stack([torch.from_numpy(rng.permutation(np.arange(1, 30))[:10]) for _ in range(50)])
    targets = torch.from_numpy(rng.integers(1, 30, size=50))
    identity = torch.arange(30) - 1
    rank = code_level_ranks(top, targets, identity)
    exact = torch.tensor([int((row == t).nonzero()[0]) + 1 if (row == t).any() else 0 for row, t in zip(top, targets)])
    assert torch.equal(rank, exact)


def test_a_run_on_colliding_imported_codes_records_code_level_metrics(tiny_dataset):
    from recbole_macrec.quick_start import run_recbole

    text, _ = write_codes(tiny_dataset / "tiny")
    text["i1"] = text["i0"]                # a published collision, as in Instruments' text codes
    (tiny_dataset / "tiny" / "tiny.text.codes.json").write_text(json.dumps(text))
    cfg = tiny_config_dict(tiny_dataset, **{**TINY_T5, "sid_views": ["text"], "gr_views": ["text"]})
    result = run_recbole("TIGER", "tiny", config_dict=cfg)
    code = result["code_level"]
    assert code["view"] == "text" and code["collision_rate_before"] == pytest.approx(1 / 30)
    for m, value in result["test_result"].items():   # a shared code can only help (RecBole rounds to 4 places)
        assert code["test_result"][m] >= value - 5e-5
    saved = json.loads(open(result["result_file"]).read())
    assert saved["code_level"]["test_result"] == code["test_result"]
    # without collisions no code-level record is written (it would equal the exact metrics)
    write_codes(tiny_dataset / "tiny")
    assert "code_level" not in run_recbole("TIGER", "tiny", config_dict=cfg)
