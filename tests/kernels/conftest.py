"""Makes the kernel tests' helper module (kernel_batches) importable in any import mode."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
