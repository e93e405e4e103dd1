"""``python -m vmc`` runs the daemon, like ``vmcd``."""

import sys

from vmc.daemon import main

sys.exit(main())
