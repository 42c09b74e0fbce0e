"""`python -m model.train`: the training loop's command line (model/train/loop.py)."""
import sys

from model.train.loop import main

sys.exit(main())
