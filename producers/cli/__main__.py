"""`python -m producers.cli`: the deskmail command."""

import sys

from producers.cli import main

sys.exit(main())
