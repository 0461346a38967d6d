"""`python -m allq` runs the command line."""

import sys

from allq.cli import main

sys.exit(main())
