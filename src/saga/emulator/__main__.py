"""``python -m saga.emulator``: the same as ``saga emulate``."""

import sys

from saga.emulator.cli import main

sys.exit(main())
