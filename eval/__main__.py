"""``python -m eval`` is ``python -m eval.run``."""

import sys

from .run import main

sys.exit(main())
