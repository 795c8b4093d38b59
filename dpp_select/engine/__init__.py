"""The one-process greedy engine: exact greedy MAP of the relevance-weighted DPP in feature space
(SPARD Eq. 6; Chen et al. 2018), never forming the N x N kernel.

- ``kernel.py``: the full pass over the pool (basis extension, float32 bounds, float64
  re-scoring, the tie rule) and the checks every path shares;
- ``backends.py``: that pass on numpy (BLAS) and on torch (any device), with its error bounds;
- ``device_pass.py``: the full-pass greedy with its bookkeeping on the tensor's device, and
  ``device_rescore.py``, the float64 re-scoring there;
- ``lazy.py``: the lazy greedy (stale gains as upper bounds), on ``array_ops.py``'s numpy and
  torch namespaces.

Nothing here knows about processes: :func:`dpp_select.greedy.greedy_dpp_result` calls it in one
process and :mod:`dpp_select.distributed` on each rank's shard.
"""
