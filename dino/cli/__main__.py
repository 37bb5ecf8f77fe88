"""``python -m dino.cli`` (what ``torchrun ... -m dino.cli train`` runs)."""

import sys

from dino.cli import main

sys.exit(main())
