"""Checks of a dataset before RecBole reads it, and what RecBole leaves out: filtered interactions
reported (in the log, the run json and the pre-stage's report), a bad value named by file and line."""
import json
import os

import pytest

from conftest import TINY_T5, tiny_config_dict, write_codes


def test_run_on_filtered_data_then_unfiltered_evaluates_all_items(tiny_dataset):
    from recbole_macrec.quick_start import build_run

    write_codes(tiny_dataset / "tiny")
    cfg = tiny_config_dict(tiny_dataset, **TINY_T5)
    small = build_run("TIGER", "tiny", config_dict={**cfg, "item_inter_num_interval": "[10,inf)"})[1]
    full = build_run("TIGER", "tiny", config_dict=cfg)[1]
    assert small.item_num < full.item_num == 31


def test_dropped_interactions_are_reported(tiny_dataset, caplog):
    from recbole_macrec.quick_start import build_run

    lines = (tiny_dataset / "tiny" / "tiny.item").read_text().splitlines()
    (tiny_dataset / "tiny" / "tiny.item").write_text("\n".join(l for l in lines if not l.startswith("i5\t")) + "\n")
    absent = sum(line.split("\t")[1] == "i5" for line in (tiny_dataset / "tiny" / "tiny.inter").read_text().splitlines())
    with caplog.at_level("WARNING"):
        build_run("SASRec", "tiny", config_dict=tiny_config_dict(tiny_dataset))
    assert f"{absent} left out because their item has no row in" in caplog.text


def test_non_numeric_timestamp_is_named(tiny_dataset):
    from recbole_macrec.errors import DataError
    from recbole_macrec.quick_start import build_run

    path = tiny_dataset / "tiny" / "tiny.inter"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tyesterday"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"tiny.inter: line 4: 'timestamp' is 'yesterday', not a number"):
        build_run("SASRec", "tiny", config_dict=tiny_config_dict(tiny_dataset))


def test_interactions_whose_item_has_no_row_are_counted_in_log_json_and_report(tiny_dataset, caplog):
    """RecBole drops the interactions of items that have no .item row; a semantic-ID run reads
    the pre-stage's folder, and must say so too."""
    from conftest import write_codes
    from recbole_macrec.quick_start import run_recbole

    item_file = tiny_dataset / "tiny" / "tiny.item"
    lines = item_file.read_text().splitlines()
    kept = [line for line in lines if not line.startswith(("i3\t", "i7\t"))]
    item_file.write_text("\n".join(kept) + "\n")
    inter = (tiny_dataset / "tiny" / "tiny.inter").read_text().splitlines()[1:]
    absent = sum(line.split("\t")[1] in ("i3", "i7") for line in inter)
    assert absent > 0
    write_codes(tiny_dataset / "tiny")
    for view in ("text", "image"):   # codes only for the items that have a row
        path = tiny_dataset / "tiny" / f"tiny.{view}.codes.json"
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k not in ("i3", "i7")}))
    result = run_recbole("TIGER", "tiny", config_dict=tiny_config_dict(tiny_dataset, **TINY_T5))
    saved = json.loads(open(result["result_file"]).read())
    assert saved["dropped_interactions"]["item_has_no_row"] == absent
    assert saved["dropped_interactions"]["interactions"] == len(inter)
    report = json.loads(open(os.path.join(saved["semantic_ids"]["folder"], "sid_report.json")).read())
    assert report["dropped_interactions"]["item_has_no_row"] == absent
    assert f"{absent} left out because their item has no row" in caplog.text
