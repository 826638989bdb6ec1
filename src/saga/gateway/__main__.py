"""``python -m saga.gateway``: the same as ``saga serve``."""

import sys

from saga.gateway.cli import main

sys.exit(main())
