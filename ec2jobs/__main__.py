"""`python -m ec2jobs ...`: the same as the `ec2jobs` console script."""

from __future__ import annotations

import sys

from ec2jobs.cli import main

if __name__ == "__main__":
    sys.exit(main())
