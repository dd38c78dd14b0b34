"""recbole-macrec: generative recommendation with semantic IDs (MACRec, TIGER, LC-Rec) for RecBole."""
from recbole_macrec import compat

compat.apply()

__version__ = "0.1.0"
