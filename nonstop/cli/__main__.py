"""``python -m nonstop.cli`` is ``nonstop``."""

from nonstop.cli import main

main()
