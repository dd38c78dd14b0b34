"""RecBole atomic files: what our writer writes, RecBole's reader reads back unchanged."""
import numpy as np

from conftest import tiny_config_dict

TRICKY = ['"Weird" Al', 'back\\slash', "it's", 'tab\there', 'a "quoted" word', '"', 'semi;colon,comma']


def test_text_survives_our_writer_and_recboles_reader(tmp_path):
    """Quotes, backslashes and tabs in a cell: written by write_atomic, read back by RecBole."""
    import pandas as pd
    from recbole.data.dataset import Dataset

    from recbole_macrec.config import Config
    from recbole_macrec.data.atomic import read_atomic, write_atomic

    folder = tmp_path / "data" / "tiny"
    folder.mkdir(parents=True)
    rows = [(f"u{u}", f"i{i}", float(u * 10 + i)) for u in range(4) for i in range(len(TRICKY))]
    write_atomic(str(folder / "tiny.inter"), pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]),
                 {"user_id": "token", "item_id": "token", "timestamp": "float"})
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(len(TRICKY))], "brand": TRICKY})
    write_atomic(str(folder / "tiny.item"), items, {"item_id": "token", "brand": "token"})
    assert read_atomic(str(folder / "tiny.item"))[0]["brand"].tolist() == TRICKY
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(
        tmp_path / "data", load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "brand"]}))
    ds = Dataset(config)
    brands = ds.id2token("brand", np.asarray(ds.item_feat["brand"], dtype=np.int64))
    by_item = dict(zip(ds.id2token("item_id", np.asarray(ds.item_feat["item_id"], dtype=np.int64)), brands))
    assert [by_item[f"i{i}"] for i in range(len(TRICKY))] == TRICKY
