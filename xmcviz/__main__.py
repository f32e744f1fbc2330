"""``python -m xmcviz``: the command line (see :mod:`xmcviz.cli`)."""
import sys

from .cli import main

sys.exit(main())
