import gzip
import http.server
import json
import threading

import numpy as np
import pytest

from conftest import tiny_text_encoder
from dataset_prep import amazon2018 as prep


def _image(path, color=(200, 30, 30)):
    from PIL import Image

    Image.new("RGB", (8, 8), color).save(path, format="JPEG")


@pytest.fixture
def raw(tmp_path):
    """6 users x 6 items fully connected, plus records every filter must remove."""
    lines, t = ["bad,line"], 0
    for u in range(6):
        for i in range(6):
            lines.append(f"i{i},u{u},5.0,{1000 + t}")
            t += 1
        lines.append(f"noimg,u{u},4.0,{2000 + u}")
        lines.append(f"nometa,u{u},4.0,{3000 + u}")
    lines.append("i0,u0,3.0,99999")                       # repeated pair: the first one is kept
    lines += [f"i{i},u6,5.0,{4000 + i}" for i in range(3)]  # a user with 3 items: below the 5-core
    lines += [f"i6,u{u},5.0,{5000 + u}" for u in range(2)]  # an item with 2 users
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "Musical_Instruments.csv").write_text("\n".join(lines) + "\n")
    meta = [json.dumps({"asin": f"i{i}", "title": f"guitar model {i}", "description": ["a", f"fine item {i}"],
                        "brand": "Acme", "category": ["Music", "Guitars"],
                        "imageURLHighRes": [f"http://x/i{i}.jpg"]}) for i in range(7)]
    meta.append(json.dumps({"asin": "noimg", "title": "no picture"}))
    meta.append("{not json at all")
    meta.append(json.dumps({"asin": "i1", "title": "duplicate record"}))
    with gzip.open(folder / "meta_Musical_Instruments.json.gz", "wt") as f:
        f.write("\n".join(meta) + "\n")
    return folder


def test_recipe_filters_on_hand_made_raw_files(raw, tmp_path):
    report = prep.prepare("Instruments", raw, tmp_path / "out", progress=False)
    assert report["stats"]["users"] == 6 and report["stats"]["items"] == 6
    assert report["stats"]["interactions"] == 36
    assert report["malformed_rating_lines"] == 1 and report["malformed_meta_lines"] == 1
    assert report["duplicate_asins"] == 1
    inter = (tmp_path / "out" / "Instruments.inter").read_text().splitlines()
    assert inter[0] == "user_id:token\titem_id:token\ttimestamp:float"
    u0 = [line.split("\t") for line in inter[1:] if line.startswith("u0\t")]
    assert [r[1] for r in u0] == [f"i{i}" for i in range(6)] and u0[0][2] == "1000.0"
    item = (tmp_path / "out" / "Instruments.item").read_text().splitlines()
    assert item[2].split("\t")[:3] == ["i1", "guitar model 1", "a fine item 1"]


def test_items_with_bad_images_are_dropped_and_counted(raw, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        _image(images / f"i{i}.jpg")
    (images / "i5.jpg").write_bytes(b"not a jpeg")
    report = prep.prepare("Instruments", raw, tmp_path / "out", images_dir=images, progress=False)
    assert report["items_dropped_for_images"] == {"count": 1, "missing": 0, "unreadable": 1}
    assert (report["stats"]["users"], report["stats"]["items"], report["stats"]["interactions"]) == (6, 5, 30)


def test_unknown_category_files_are_a_named_error(tmp_path):
    with pytest.raises(prep.PrepError, match="Video_Games.csv"):
        prep.prepare("Games", tmp_path, tmp_path / "out", progress=False)


@pytest.fixture
def image_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    _image(root / "good.jpg")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8garbage")
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


def test_download_reports_failures_and_resumes(image_server, tmp_path):
    base, hits = image_server
    urls = {"A": f"{base}/good.jpg", "B": f"{base}/missing.jpg", "C": f"{base}/corrupt.jpg"}
    out = tmp_path / "img"
    report = prep.download_images(urls, out, retries=2, backoff=0, progress=False)
    assert report["downloaded"] == 1 and report["skipped"] == 0
    assert report["failed"] == {"B": "HTTP 404", "C": "not a readable image"}
    assert prep.valid_image(out / "A.jpg") and not (out / "B.jpg").exists() and not (out / "C.jpg").exists()
    before = len([h for h in hits if "good" in h])
    again = prep.download_images(urls, out, retries=2, backoff=0, progress=False)
    assert again["skipped"] == 1 and again["downloaded"] == 0
    assert len([h for h in hits if "good" in h]) == before  # the finished item was not fetched again


def test_downloads_stay_inside_the_folder_use_http_only_and_are_bounded(image_server, tmp_path, monkeypatch):
    base, _ = image_server
    secret = tmp_path / "secret.jpg"
    _image(secret)
    out = tmp_path / "img"
    urls = {"../escaped": f"{base}/good.jpg", "LOCAL": secret.as_uri(), "OK": f"{base}/good.jpg"}
    report = prep.download_images(urls, out, retries=1, backoff=0, progress=False)
    assert report["failed"]["../escaped"] == "not a plain file name" and not (tmp_path / "escaped.jpg").exists()
    assert report["failed"]["LOCAL"].startswith("url scheme not allowed") and not (out / "LOCAL.jpg").exists()
    assert report["downloaded"] == 1
    monkeypatch.setattr(prep, "MAX_IMAGE_BYTES", 10)
    report = prep.download_images({"BIG": f"{base}/good.jpg"}, out, retries=1, backoff=0, progress=False)
    assert report["failed"]["BIG"].startswith("larger than") and not (out / "BIG.jpg").exists()


def test_metadata_with_unsafe_asins_is_counted_and_left_out(tmp_path):
    path = tmp_path / "meta.json.gz"
    with gzip.open(path, "wt") as f:
        for asin in ("GOOD1", "../../etc/x", "a/b", "GOOD2"):
            f.write(json.dumps({"asin": asin, "title": "t", "imageURLHighRes": ["http://x/y.jpg"]}) + "\n")
    meta, counts = prep.read_meta(str(path))
    assert sorted(meta) == ["GOOD1", "GOOD2"] and counts["unsafe_asins"] == 2


def _tiny_image_encoder(path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=16, patch_size=8,
                                                   projection_dim=6)).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(path)


def test_embeddings_from_local_encoders_join_to_items_and_resume(raw, tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from recbole_macrec.data.item_views import load_item_view

    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        _image(images / f"i{i}.jpg", color=(40 * i, 10, 10))
    tiny_text_encoder(tmp_path / "bert")
    _tiny_image_encoder(tmp_path / "clip")
    out = tmp_path / "out"
    report = prep.prepare("Instruments", raw, out, images_dir=images, text_encoder=str(tmp_path / "bert"),
                          image_encoder=str(tmp_path / "clip"), batch_size=4, progress=False)
    assert report["text_view"] == [6, 8] and report["image_view"] == [6, 6]
    items, text, _ = load_item_view(out / "Instruments.text.npz", items=["i3", "i0"])
    # row of i3 = mean over (title, description) of mean-pooled last hidden states
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "bert")
    model = AutoModel.from_pretrained(tmp_path / "bert").eval()
    with torch.no_grad():
        pooled = [model(**tokenizer(t, return_tensors="pt")).last_hidden_state.mean(1)[0]
                  for t in ("guitar model 3", "a fine item 3")]
    np.testing.assert_allclose(text[0], torch.stack(pooled).mean(0).numpy(), atol=1e-5)
    _, image, _ = load_item_view(out / "Instruments.image.npz")
    assert not np.allclose(image[0], image[5])
    # a rerun finds every item in the cache and recomputes nothing (empty metadata: any encoding would fail)
    assert prep.EmbeddingCache(str(out / ".text.cache.npz")).todo([f"i{i}" for i in range(6)]) == []
    again = prep.embed_texts([f"i{i}" for i in range(6)], {}, str(tmp_path / "bert"), str(out / ".text.cache.npz"),
                             progress=False)
    items, first, _ = load_item_view(out / "Instruments.text.npz")
    np.testing.assert_allclose(again, first)
