from asyncopd.cli import main

main()
