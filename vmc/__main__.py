"""``python -m vmc`` runs the daemon, like ``vmcd``."""

import sys

from vmc.launch import vmcd

sys.exit(vmcd())
