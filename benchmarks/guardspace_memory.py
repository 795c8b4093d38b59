"""GuardSpace projector memory for Llama-2-7B, from the shapes alone (no weights, no forward pass).

The authors' code (arXiv 2510.14301) stores a dense ``d_in x d_in`` projector per Linear: one 4096^2
matrix for each of q/k/v/o/gate/up and one 11008^2 for down_proj, in every layer.
``spag_optim.guardspace`` shares one projector among the Linears that read the same input (q/k/v,
gate/up: 4 per layer instead of 7) and stores each as ``Q`` with ``min(null_dim, d - null_dim)``
columns (:class:`spag_optim.guardspace.NullSpaceProjector`). The factored size depends on ``s``, the
dimension of the span of the null-space data's inputs at a layer (``null_dim = d - s``); the table
gives several ``s``, including the worst case ``s = d/2``. Bytes are for the model's dtype (fp16).

    python benchmarks/guardspace_memory.py

Writes benchmarks/results/guardspace_memory.md.
"""

from __future__ import annotations

import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spag_optim.guardspace import find_targets

#: Llama-2-7B's shapes (its config.json).
LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
)
#: Linears that read the same tensor in a Llama block (the library finds these from a forward pass).
SHARED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
BYTES = 2  # fp16


def group_key(name: str) -> str:
    prefix, _, leaf = name.rpartition(".")
    for group in SHARED:
        if leaf in group:
            return f"{prefix}.{group[0]}"
    return name


def main() -> str:
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA2_7B))
    linears = find_targets(model)  # every Linear but the LM head, as apply_guardspace
    dense = sum(m.in_features**2 for m in linears.values())
    groups = {group_key(n): m.in_features for n, m in linears.items()}
    shared_dense = sum(d * d for d in groups.values())

    def factored(span: int | None) -> int:
        total = 0
        for d in groups.values():
            s = d // 2 if span is None else min(span, d)
            total += d * min(d - s, s)
        return total

    gb = lambda n: n * BYTES / 1e9  # noqa: E731
    rows = [
        ("authors' layout: dense d x d per Linear", len(linears), dense),
        ("shared per input, dense", len(groups), shared_dense),
    ]
    for span in (256, 1024, 4096):
        rows.append((f"shared + factored, null-data span s = {span}", len(groups), factored(span)))
    rows.append(("shared + factored, worst case s = d/2", len(groups), factored(None)))
    lines = [
        "# GuardSpace projector memory, Llama-2-7B shapes (fp16)",
        "",
        f"{len(linears)} adapted Linears (32 layers x 7, LM head excluded); computed from the shapes by",
        "`python benchmarks/guardspace_memory.py` (no weights).",
        "",
        "| layout | projectors | numbers stored | GB | vs authors' |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, count, numel in rows:
        lines.append(f"| {label} | {count} | {numel:,} | {gb(numel):.2f} | {numel / dense:.3f}x |")
    lines += [
        "",
        "s is the dimension the null-space data span at a layer (at most its token count); the",
        "factored form stores d x min(s, d - s) numbers, so it is smallest when the null data are",
        "few tokens (s << d) or span almost everything (d - s << d). At s = 4096 the 4096-wide inputs",
        "have no null space left (their adapters are inert; apply_guardspace warns), only down_proj's remain.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = main()
    print(text)
    out = os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "guardspace_memory.md"
    )
    with open(out, "w") as f:
        f.write(text)
