"""TIGER (Rajput et al., NeurIPS 2023): generative retrieval over one view's semantic IDs.

A T5 encoder reads the history's semantic IDs and the decoder generates the next item's ID
under a trie constraint. Semantic IDs come from a plain RQ-VAE on the text view.
"""
from recbole_macrec.model.encoder_decoder import EncoderDecoderRecommender


class TIGER(EncoderDecoderRecommender):
    """Task seqrec on the first view; everything else is the encoder-decoder backbone."""
