"""``python -m eval`` is ``python -m eval.cli``."""

import sys

from eval.cli import main

sys.exit(main())
