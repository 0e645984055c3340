"""``python -m deepscope`` runs the command line."""

import sys

from deepscope.interfaces.cli import main

sys.exit(main())
