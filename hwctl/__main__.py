"""`python -m hwctl` is the `hwctl` command."""

import sys

from hwctl.cli import main

sys.exit(main())
