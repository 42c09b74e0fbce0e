"""`python -m faceverify`: the `faceverify` command (faceverify/cli.py)."""
import sys

from faceverify.cli import main

sys.exit(main())
