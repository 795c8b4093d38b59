"""What a piece of torch code moves host-ward, for tests that run on the CPU.

Every conversion of a tensor to host values (``.cpu()``, ``.numpy()``, ``.tolist()``,
``.item()``, ``float()``, ``int()``, ``bool()``, ``np.asarray``, ``.to`` a device) is recorded
with its element count. On a CPU tensor these move nothing, but on a CUDA tensor each one is a
device-to-host copy, so a CPU run shows what a GPU run would transfer. (``.to`` a device is
counted whatever the direction, which over-counts host-to-device copies: a conservative spy.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["host_transfers"]

_CONVERSIONS = (
    "cpu",
    "numpy",
    "tolist",
    "item",
    "__float__",
    "__int__",
    "__index__",
    "__bool__",
    "__array__",
)


def _names_a_device(value: object) -> bool:
    return isinstance(value, (torch.device, str))


@contextlib.contextmanager
def host_transfers() -> Iterator[list[int]]:
    """Yield a list that collects the element count of every host-ward conversion made inside
    the ``with`` block."""
    sizes: list[int] = []
    names = (*_CONVERSIONS, "to")
    originals = {name: getattr(torch.Tensor, name) for name in names}
    own = {name for name in names if name in vars(torch.Tensor)}  # the rest are inherited

    def spy(original):
        def convert(self, *args, **kwargs):
            sizes.append(self.numel())
            return original(self, *args, **kwargs)

        return convert

    def spy_to(self, *args, **kwargs):
        if any(_names_a_device(v) for v in (*args, kwargs.get("device"))):
            sizes.append(self.numel())
        return originals["to"](self, *args, **kwargs)

    try:
        for name in _CONVERSIONS:
            setattr(torch.Tensor, name, spy(originals[name]))
        torch.Tensor.to = spy_to
        yield sizes
    finally:
        for name, original in originals.items():
            if name in own:
                setattr(torch.Tensor, name, original)
            else:
                delattr(torch.Tensor, name)
