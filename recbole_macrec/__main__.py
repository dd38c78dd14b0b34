from recbole_macrec.cli import main

main()
