"""What the Trainer tests record: the learning rate and the gradient each inner step sees, the
forwards, and what the safety closure runs."""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from spag_optim.integrations.trainer import find_spag_optimizer


class Probe(TrainerCallback):
    """Records what the inner optimizer sees at each step and what the safety closure runs.

    Give ``inner`` when the test builds the optimizer; otherwise pass the probe in the Trainer's
    ``callbacks=`` and it watches the inner optimizer of the trainer's SPAG when training begins.
    """

    def __init__(self, model, inner=None):
        self.lrs, self.grad_norms, self.safety_calls, self.safety_dtypes = [], [], 0, []
        self.forwards = 0
        self.dtypes = []  # of every forward of the first attention projection
        self._in_safety = False
        model.register_forward_pre_hook(self._count_forward)
        first_linear = model.model.layers[0].self_attn.q_proj
        first_linear.register_forward_hook(self._dtype)
        if inner is not None:
            inner.register_step_pre_hook(self._inner_step)

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        find_spag_optimizer(optimizer).inner.register_step_pre_hook(self._inner_step)

    def _count_forward(self, module, args):
        self.forwards += 1

    def _dtype(self, module, args, output):
        self.dtypes.append(output.dtype)
        if self._in_safety:
            self.safety_dtypes.append(output.dtype)

    def _inner_step(self, optimizer, args, kwargs):
        self.lrs.append(optimizer.param_groups[0]["lr"])
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.grad_norms.append(
            float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        )

    def loss_fn(self, model, batch):
        self.safety_calls += 1
        self._in_safety = True
        try:
            return model(**batch).loss
        finally:
            self._in_safety = False
