"""``python -m nonstop`` is ``nonstop``."""

from nonstop.cli import main

main()
