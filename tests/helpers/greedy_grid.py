"""The hypothesis grid of the greedy DPP property tests, in one place."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

#: The grid the greedy property tests draw from (full pass and lazy alike): pool size, dimension
#: (k > d included), beta, jitter (0 included), weighted or not, float32 or float64 storage.
GREEDY_GRID = dict(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 12),
    d=st.integers(1, 6),
    beta=st.sampled_from([0.0, 1.0, 4.0]),
    jitter=st.sampled_from([0.0, 1e-3, 0.5]),
    weighted=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
)
