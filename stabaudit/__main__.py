"""`python -m stabaudit` runs the command line."""

from stabaudit.cli import main

main()
