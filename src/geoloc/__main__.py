"""`python -m geoloc ...`: the same as the `geoloc` command (what `accelerate launch -m geoloc` runs)."""

import sys

from geoloc.cli import main

sys.exit(main())
