"""`python -m modelpilot_serve [serve] --model-uri …` — same as `modelpilot serve …`."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
