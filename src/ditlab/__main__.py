"""`python -m ditlab ...` (also what `torchrun -m ditlab train ...` runs)."""

import sys

from ditlab.cli import main

sys.exit(main())
