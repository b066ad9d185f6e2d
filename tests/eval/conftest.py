"""Make the repository root importable so `import eval` works under a plain `pytest` run.

(`python -m pytest` already puts the working directory on sys.path; the bare `pytest` command only
adds this test folder.)
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
