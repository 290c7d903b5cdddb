"""`python -m nanochat` is the `nanochat` command."""

import sys

from nanochat.cli import main

sys.exit(main())
