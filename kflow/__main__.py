"""``python -m kflow`` runs the command line."""

import sys

from kflow.cli import main

sys.exit(main())
