"""The compact token vocabulary shared by every generative model.

Layout: ``0`` pad (also T5's decoder start), ``1`` eos, then one prompt token per task, then, per
view and per level, that level's code tokens. Text and image codes are different tokens.
"""
import torch

PAD, EOS = 0, 1


class SemanticIdVocab:
    """Maps item ids to token ids per view.

    ``code_tables``: view -> ``[n_items, L]`` long tensor of codes indexed by RecBole's internal
    item id (row 0 = [PAD] item, ignored). ``tasks``: the task names that get a prompt token.
    ``first_id``: where the new tokens start (2 after pad/eos; a language model's base
    vocabulary size when the codes extend an existing vocabulary, whose ids stay unchanged).
    """

    def __init__(self, code_tables, tasks=(), first_id=2):
        self.task_ids = {task: first_id + i for i, task in enumerate(tasks)}
        offset = first_id + len(self.task_ids)
        self.level_offsets, self.level_sizes, self._item_tokens = {}, {}, {}
        for view, codes in code_tables.items():
            codes = codes.long()
            sizes = (codes[1:].max(dim=0).values + 1).tolist()
            offsets = [offset + sum(sizes[:level]) for level in range(len(sizes))]
            offset += sum(sizes)
            self.level_sizes[view], self.level_offsets[view] = sizes, offsets
            tokens = codes + torch.tensor(offsets)
            tokens[0] = PAD
            self._item_tokens[view] = tokens
        self.size = offset

    def num_levels(self, view):
        return len(self.level_sizes[view])

    def item_token_table(self, view):
        """``[n_items, L]`` token ids of every item (row 0 = pad)."""
        return self._item_tokens[view]

    def item_tokens(self, view, item_ids):
        """Token ids ``[..., L]`` of ``item_ids [...]``."""
        table = self._item_tokens[view].to(item_ids.device)
        return table[item_ids]

    def codes_of(self, view, tokens):
        """Inverse of :meth:`item_tokens` on code tokens ``[..., L]``."""
        return tokens - torch.tensor(self.level_offsets[view], device=tokens.device)
