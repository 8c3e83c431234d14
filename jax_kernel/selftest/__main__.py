"""``python -m jax_kernel.selftest``, as ``python -m jax_kernel selftest``."""

import sys

from .app import main

if __name__ == "__main__":
    sys.exit(main())
