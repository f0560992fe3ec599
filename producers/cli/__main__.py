"""`python -m producers.cli`: the deskmail command."""

import sys

from deskmail.producers.cli import main

sys.exit(main())
