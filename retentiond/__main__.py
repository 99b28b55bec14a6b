from retentiond.cli import main

main()
