"""GuardSpace (Zhang et al., arXiv 2510.14301): safety-subspace adapters on a harmful-resistant null
space, composable with SPAG.

``apply_guardspace(model, safety_batches, null_batches, rank)`` replaces a model's Linear layers in
place by :class:`GuardSpaceLinear`: a frozen residual :math:`W' = W - ABP` plus a trainable
low-rank adapter :math:`AB` initialised from the *smallest* components of a covariance-preconditioned
SVD, acting through :math:`P`, the projector onto the null space of the null-space data's inputs.
The forward pass is unchanged at initialisation, and training the adapters cannot change any
layer's output on inputs in the span of the null-space data. Train ``adapter_parameters(model)``
with any optimizer, e.g. ``SPAGOptimizer(AdamW(adapter_parameters(model)), closure)``; then
``save_guardspace`` / ``load_guardspace``, or ``merge_guardspace`` and ``save_pretrained`` for a plain
Hugging Face checkpoint.

Lives in ``spag_optim`` next to the optimizer it composes with (not in ``baselines``: it is model
surgery, not an optimizer); one concept per module: :mod:`.covariance` (step 1), :mod:`.decompose`
(steps 2-3), :mod:`.layer`, :mod:`.apply`, :mod:`.io`, :mod:`.fingerprint` (the base check on load)
and :mod:`.surgery` (all-or-nothing module replacement).
"""

from .apply import LayerReport, apply_guardspace, find_targets
from .decompose import NullSpace, null_space, preconditioned_svd
from .fingerprint import base_fingerprint
from .io import load_guardspace, merge_guardspace, save_guardspace
from .layer import GuardSpaceLinear, NullSpaceProjector
from .surgery import adapter_parameters

__all__ = [
    "apply_guardspace",
    "adapter_parameters",
    "find_targets",
    "LayerReport",
    "GuardSpaceLinear",
    "NullSpaceProjector",
    "NullSpace",
    "null_space",
    "preconditioned_svd",
    "save_guardspace",
    "load_guardspace",
    "merge_guardspace",
    "base_fingerprint",
]
