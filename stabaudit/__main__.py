"""`python -m stabaudit` runs the command line."""

from stabaudit.entry import main

main()
