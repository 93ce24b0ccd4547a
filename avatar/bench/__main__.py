"""``python -m avatar.bench <benchmark> [options]`` (= ``avatar bench ...``): see :mod:`avatar.bench`."""

import sys

from avatar.bench import main

sys.exit(main())
