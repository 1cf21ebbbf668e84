"""What the recipe tests share: the `auralm` command."""

import sys

AURALM = [sys.executable, "-m", "auralm"]
