"""Benchmarks: parallelize side by side with its peers. Run ``python -m benchmarks --help``.

Importing this package pins BLAS/OpenMP libraries to one thread (before anything imports numpy), so that W2's
numpy work measures process parallelism, not BLAS threads fighting over 2 cores. Values already set in the
environment are kept; the report header shows what was in effect.
"""

from __future__ import annotations

import os

BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                  "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

for _name in BLAS_VARIABLES:
    os.environ.setdefault(_name, "1")
