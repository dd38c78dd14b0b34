"""Train and test any plugin model (MACRec, TIGER, MQL4GRec, LCRec) or RecBole built-in model.

    python -m recbole_macrec --model=MACRec [--dataset=ml-100k] [--config_files="a.yaml b.yaml"] [--key=value ...]
    python run_recbole.py ...   (the same, from a checkout)
"""
import argparse
import sys

from recbole_macrec.config import command_line_values
from recbole_macrec.errors import DataError, SettingError
from recbole_macrec.quick_start import run
from recbole_macrec.registry import get_model


def parse_args(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default="MACRec", help="model name")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated yaml files")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) for DDP")
    parser.add_argument("--ip", type=str, default="localhost")
    parser.add_argument("--port", type=str, default="5678")
    parser.add_argument("--world_size", type=int, default=-1)
    parser.add_argument("--group_offset", type=int, default=0)
    # Everything else (--key=value) is read by RecBole's Config from sys.argv; RecBole would only
    # warn about anything else ("--epochs 5" trains the yaml's epochs), so it is an error here.
    args, rest = parser.parse_known_args(argv)
    try:
        unrecognized = command_line_values(rest)[1]
    except SyntaxError as err:
        parser.error(str(err))
    if unrecognized:
        parser.error(f"settings must be given as --key=value; not understood: {' '.join(unrecognized)}")
    return args


def main(argv=None, prog=None):
    args = parse_args(argv, prog)
    try:
        get_model(args.model)
    except ValueError as err:
        sys.exit(str(err))
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    try:
        return run(args.model, args.dataset, config_file_list=config_file_list, nproc=args.nproc,
                   world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset)
    except (SettingError, DataError, FileNotFoundError) as err:   # fixable input: one line, no traceback
        sys.exit(f"error: {err}")

