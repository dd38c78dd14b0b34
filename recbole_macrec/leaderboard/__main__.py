from recbole_macrec.leaderboard.cli import main

main(prog="python -m recbole_macrec.leaderboard")
