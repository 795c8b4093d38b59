"""Cross-machine check of portable numerics: 200 AdamW steps of a tiny transformer, then a hash.

    python benchmarks/numerics_probe.py                     # portable numerics (a child process)
    python benchmarks/numerics_probe.py --numerics native   # this CPU's kernels, for contrast

The model and data are those of a plain-torch probe (``nn.TransformerEncoder``, 2 layers of width
64, vocabulary 300, batches of 32 x 24 random tokens, seed 0). Two machines agree bit for bit when
they print the same hash with the same pinned versions (``constraints.txt``); the hash measured on
the project's machine is in ``docs/demo.md``. Under ``native`` the hash changes with the CPU and
with ``ATEN_CPU_CAPABILITY`` or ``MKL_CBWR``; under ``portable`` it must not.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from _demo.numerics import (  # noqa: E402
    NUMERICS,
    in_portable_process,
    portable_numerics,
    run_portable,
)

VOCAB, WIDTH, LENGTH, STEPS = 300, 64, 24, 200


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, WIDTH)
        layer = nn.TransformerEncoderLayer(
            WIDTH, 4, 128, dropout=0.0, batch_first=True, norm_first=True
        )
        self.body = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.head(self.body(self.emb(x), mask=mask, is_causal=True))


def train() -> tuple[str, float]:
    """The hash of the weights after :data:`STEPS` steps, and the last loss."""
    torch.manual_seed(0)
    model = _Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x = torch.randint(0, VOCAB, (32, LENGTH + 1), generator=generator)
        logits = model(x[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().numpy().tobytes())
    return digest.hexdigest()[:16], float(loss.detach())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numerics", choices=NUMERICS, default="portable")
    args = parser.parse_args(argv)
    if args.numerics == "portable":
        if not in_portable_process():
            return run_portable([__file__, *(sys.argv[1:] if argv is None else argv)])
        with portable_numerics():
            digest, loss = train()
    else:
        torch.set_num_threads(1)
        digest, loss = train()
    settings = {k: os.environ.get(k, "") for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")}
    print(
        f"hash {digest} loss {loss:.9f} numerics {args.numerics} capability "
        f"{torch.backends.cpu.get_cpu_capability()} settings {settings} torch {torch.__version__}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
