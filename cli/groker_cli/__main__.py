from groker_cli.main import main

main()
