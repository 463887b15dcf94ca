"""``python -m vlmtune.cli …`` = ``vlmtune …``."""

import sys

from vlmtune.cli import main

sys.exit(main())
