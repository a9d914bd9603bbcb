"""`python -m sdxl.cli ...` runs the `sdxl` command."""

import sys

from sdxl.cli import main

sys.exit(main())
