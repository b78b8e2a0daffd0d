from fastkd.cli import main

main()
