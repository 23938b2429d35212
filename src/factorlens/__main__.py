"""``python -m factorlens`` runs the CLI."""

import sys

from factorlens.cli import main

sys.exit(main())
