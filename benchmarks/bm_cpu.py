"""CPU benchmark: our batch norm vs torch's vs the copy floor (same code as `batchnorm bench`).

PYTHONPATH=. python benchmarks/bm_cpu.py --threads 2 --allocator both
"""

import sys

from batchnorm.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
