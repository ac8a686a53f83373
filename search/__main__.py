"""``python -m search``: delegates to ``search.cli.main``."""

import sys

from search.cli import main

sys.exit(main())
