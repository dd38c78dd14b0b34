from recbole_macrec.leaderboard.cli import main

main()
