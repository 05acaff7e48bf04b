"""``python -m lib ...``: the book's command line (``lib/book/cli.py``)."""
import sys

from lib.book.cli import main

sys.exit(main())
