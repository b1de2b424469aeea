"""``python -m fastgan``: the same command line as the ``fastgan`` console script."""

import sys

from fastgan.cli import main

sys.exit(main())
