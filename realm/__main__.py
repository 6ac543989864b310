from realm.cli import main

main()
