"""``python -m xmcviz.sweep ...``: the same as ``xmcviz sweep ...``."""
import sys

from .cli import main

sys.exit(main())
