from re2tal_cli.cli.app import main

main()
