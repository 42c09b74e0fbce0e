"""`python -m model.evaluate`: LFW's protocols on the command line (model/evaluate/protocols.py)."""
import sys

from model.evaluate.protocols import main

sys.exit(main())
