"""A new backbone is one file: this test-only GRU decoder implements the five methods of
:class:`SemanticIdRecommender` and nothing else, registers itself, and gets semantic IDs, the
task mixture, tries, constrained beam search, RecBole evaluation and the generative trainer
from the base."""
import pytest
import torch
from torch import nn

from conftest import build_model, tiny_config_dict, write_codes
from recbole_macrec.model.packing import IGNORE
from recbole_macrec.model.semantic_id_recommender import SemanticIdRecommender, load_code_tables
from recbole_macrec.model.vocab import EOS, PAD
from recbole_macrec.registry import PLUGIN_MODELS, register_model


class ToyGRU(SemanticIdRecommender):
    """A GRU decoder started from the mean embedding of the history's tokens; task seqrec only."""

    row_pads = (PAD, IGNORE)   # task_rows: (history tokens, target tokens)
    eos_id = EOS

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.set_tasks(["seqrec"])
        self.set_vocab(load_code_tables(dataset, self.views[:1]), ["seqrec"])
        self.embed = nn.Embedding(self.vocab.size, 16, padding_idx=PAD)
        self.gru = nn.GRU(16, 16, batch_first=True)
        self.head = nn.Linear(16, self.vocab.size)

    def task_kind(self, task):
        return "seq"

    def history(self, interaction, view):
        return self.item_tokens(view, interaction[self.ITEM_SEQ]).flatten(1)

    def start_state(self, history):
        mask = history.ne(PAD).unsqueeze(-1).float()
        return ((self.embed(history) * mask).sum(1) / mask.sum(1).clamp_min(1))[None]

    def target_log_probs(self, history, target):
        """``[B, L + 1, vocab]`` log-probabilities of each target position (teacher forcing)."""
        inputs = torch.cat([target.new_full((len(target), 1), PAD), target[:, :-1].clamp_min(0)], 1)
        out, _ = self.gru(self.embed(inputs), self.start_state(history))
        return torch.log_softmax(self.head(out).float(), -1)

    def task_rows(self, task, interaction, max_len=None):
        view = self.views[0]
        tokens = self.item_tokens(view, interaction[self.POS_ITEM_ID])
        return self.history(interaction, view), torch.cat([tokens, tokens.new_full((len(tokens), 1), EOS)], 1)

    def token_losses(self, rows):
        history, target = rows
        logp = self.target_log_probs(history, target)
        valid = target.ne(IGNORE)
        return -logp.gather(2, target.clamp_min(0)[..., None])[..., 0] * valid, valid

    def beam_step(self, interaction, view):
        history = self.history(interaction, view)
        state = {"h": self.start_state(history)}

        def step(tokens, reorder):
            if tokens is None:
                tokens = history.new_full((len(history), 1), PAD)
            else:
                state["h"] = state["h"][:, reorder]
            out, state["h"] = self.gru(self.embed(tokens), state["h"])
            return torch.log_softmax(self.head(out[:, -1]).float(), -1)

        return step, len(history)

    def teacher_forced_scores(self, interaction, view, items):
        tokens = self.item_tokens(view, items)
        target = torch.cat([tokens, tokens.new_full((len(tokens), 1), EOS)], 1)
        logp = self.target_log_probs(self.history(interaction, view), target)
        return logp.gather(2, target[..., None])[..., 0].mean(1)


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(PLUGIN_MODELS, "ToyGRU", PLUGIN_MODELS.get("ToyGRU"))
    register_model("ToyGRU", ToyGRU)


def test_the_new_backbone_decodes_exactly_what_it_scores(tiny_dataset, toy_registered):
    write_codes(tiny_dataset / "tiny")
    model, _, data = build_model("ToyGRU", tiny_dataset, sid_views=["text"])
    model.eval()
    batch = next(iter(data[2]))[0][torch.arange(5)]
    model.beam_size = model.n_items
    with torch.no_grad():
        items, scores = model.beam_search(batch, "text")
        n = model.n_items
        exact = torch.stack([model.teacher_forced_scores(batch[torch.tensor([r] * (n - 1))], "text",
                                                         torch.arange(1, n)) for r in range(len(batch))])
    assert torch.equal(items[:, :n - 1], exact.argsort(dim=1, descending=True) + 1)
    torch.testing.assert_close(scores[:, :n - 1], exact.sort(dim=1, descending=True).values, atol=1e-5, rtol=0)


def test_the_new_backbone_trains_and_evaluates_through_the_runner(tiny_dataset, toy_registered):
    from recbole_macrec.quick_start import run_recbole
    from recbole_macrec.trainer.generative_trainer import GenerativeTrainer

    write_codes(tiny_dataset / "tiny")
    cfg = tiny_config_dict(tiny_dataset, sid_method="import", sid_views=["text"], epochs=2, learning_rate=0.01)
    result = run_recbole("ToyGRU", "tiny", config_dict=cfg)
    assert result["epochs_run"] == 2 and result["semantic_ids"]["method"] == "import"
    assert result["settings"]["gr_task_mix"] == "released"      # SemanticIdRecommender.yaml was read
    from recbole_macrec.registry import get_trainer

    assert get_trainer(None, "ToyGRU") is GenerativeTrainer
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
