"""`splice demo`'s defaults, shared by the command (demo.py: its options) and the job (demo_job.py: its drawing);
no imports, so the parser stays light and neither of the two imports the other's module for them."""

from __future__ import annotations

DEMO_PAIRS = 4
DEMO_STEPS = 40  # a few minutes for 4 pairs on 2 CPU cores with the preview preset
DEMO_SIZE = 128  # pixels, square
