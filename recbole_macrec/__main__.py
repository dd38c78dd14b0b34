from recbole_macrec.cli import main

main(prog="python -m recbole_macrec")
