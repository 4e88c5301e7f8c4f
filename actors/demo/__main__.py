"""``python -m actors.demo``."""

import sys

from actors.demo import main

sys.exit(main())
