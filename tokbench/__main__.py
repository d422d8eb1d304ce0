"""`python -m tokbench ...` (and `torchrun -m tokbench ...`) runs the same CLI as the console script."""

import sys

from .cli import main

sys.exit(main())
