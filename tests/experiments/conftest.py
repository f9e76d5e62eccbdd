"""Makes the experiment scripts importable (they live in experiments/, not in the package)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "experiments"))
