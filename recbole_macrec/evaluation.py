"""What a run's test pass records beyond RecBole's metrics: each test user's rank of the held-out
item (for paired significance tests between runs), the ranked lists (for code-level metrics), and
the code-level Hit/NDCG of imported colliding codes."""
import numpy as np
import torch


class TestRankRecorder:
    """Records, per test user, the rank (1..max top-k, 0 = not ranked) of the held-out item, so
    that leaderboards can run paired significance tests on per-user metrics, and the ranked
    top-k items and the target (internal ids) for code-level metrics."""

    def __init__(self, trainer, dataset):
        self.trainer, self.dataset = trainer, dataset
        self.users, self.topk, self.top_items, self.targets = [], None, [], []
        collector, evaluator = trainer.eval_collector, trainer.evaluator
        self._collect, self._evaluate = collector.eval_batch_collect, evaluator.evaluate
        k = max(trainer.config["topk"])

        def collect(scores, interaction, positive_u, positive_i):
            self.users.append(interaction[dataset.uid_field].cpu())
            # the same call as RecBole's collector makes, so ties break the same way
            self.top_items.append(torch.topk(scores, k, dim=-1).indices.cpu())
            target = torch.full((len(scores),), -1, dtype=torch.long)
            target[positive_u.cpu()] = positive_i.cpu()
            self.targets.append(target)
            return self._collect(scores, interaction, positive_u, positive_i)

        def evaluate(struct):
            self.topk = struct.get("rec.topk")
            return self._evaluate(struct)

        collector.eval_batch_collect, evaluator.evaluate = collect, evaluate

    def ranks(self):
        """``(user tokens [n], rank [n])`` of the last evaluation (with several processes, the
        union of the ranks' users that the distributed evaluation gathered)."""
        hits = self.topk[:, :-1].numpy()
        rank = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0).astype(np.int16)
        users = getattr(self.trainer, "eval_users", None)
        users = torch.cat(self.users) if users is None else users
        users = self.dataset.id2token(self.dataset.uid_field, users.numpy())
        return np.asarray(users).astype(str), rank

    def ranked_items(self):
        """``(top-k items [n, K], target item [n])`` of the last evaluation (internal ids)."""
        return torch.cat(self.top_items), torch.cat(self.targets)

    def close(self):
        self.trainer.eval_collector.eval_batch_collect = self._collect
        self.trainer.evaluator.evaluate = self._evaluate


def code_level_result(config, dataset, model, recorder, semantic_ids):
    """Code-level Hit/NDCG (see :mod:`recbole_macrec.code_metrics`) of the test pass, over the
    published codes of the model's first inference view, when the codes were imported and that
    view's collided; else None (trained codes are resolved before training, as in the released
    pipelines, so their exact metrics are the released ones)."""
    from recbole_macrec.code_metrics import code_groups, code_level_ranks, metrics_from_ranks

    if semantic_ids is None or not config["single_spec"]:
        return None   # (several processes: each rank holds only its users' lists)
    views, report = model.inference_views, semantic_ids.report
    per_view = {v["view"]: v for v in report["per_view"]}
    if report["method"] != "import" or per_view.get(views[0], {}).get("collision_rate_before", 0) == 0:
        return None
    groups = code_groups(config["data_path"], views[0], dataset.field2id_token[dataset.iid_field])
    if groups is None:
        return None
    top, target = recorder.ranked_items()
    rank = code_level_ranks(top, target, groups)
    return {"view": views[0], "collision_rate_before": per_view[views[0]]["collision_rate_before"],
            "test_result": metrics_from_ranks(rank, config["topk"])}
