"""Put this checkout's ``saematch`` first on ``sys.path``.

Snakemake puts ``scripts/`` on the path of every script job; importing this module first makes
rules run the package beside the Snakefile, also in conda environments and cluster jobs where
it is not pip-installed.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
