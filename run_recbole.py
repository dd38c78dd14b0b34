"""Train and test any plugin model (MACRec, TIGER, MQL4GRec, LCRec) or RecBole built-in model.

    python run_recbole.py --model=MACRec [--dataset=ml-100k] [--config_files="a.yaml b.yaml"] [--key=value ...]

The same as ``python -m recbole_macrec ...`` (which works from any folder after ``pip install .``).
"""
from recbole_macrec.cli import main

if __name__ == "__main__":
    main()
