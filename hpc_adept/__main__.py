"""`python -m hpc_adept` is the `adept` command."""

import sys

from hpc_adept.cli import main

sys.exit(main())
