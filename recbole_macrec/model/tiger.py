"""TIGER (Rajput et al., NeurIPS 2023): generative retrieval over one view's semantic IDs.

A T5 encoder reads the history's semantic IDs and the decoder generates the next item's ID
under a trie constraint. Semantic IDs come from a plain RQ-VAE on the text view.
"""
from recbole_macrec.model.generative import GenerativeRecommender
from recbole_macrec.trainer.generative_trainer import GenerativeTrainer


class TIGER(GenerativeRecommender):
    trainer_class = GenerativeTrainer
