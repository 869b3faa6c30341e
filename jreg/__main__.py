"""``python -m jreg demo``."""

import sys

from .cli import main

sys.exit(main())
