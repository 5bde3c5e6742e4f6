"""`python -m pipeline` is the `splice` command."""

import sys

from pipeline.cli.main import main

sys.exit(main())
