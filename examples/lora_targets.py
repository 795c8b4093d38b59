"""The linear layers LoRA (and GuardSpace's adapters) adapt, shared by the fine-tuning examples,
the demo and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["DEFAULT_LORA_TARGETS", "find_lora_targets"]

#: Linear layers LoRA adapts in Llama-, Qwen2-, Mistral- and Gemma-style decoders (attention and
#: MLP projections). Other architectures name them differently: pass ``--lora-targets``.
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


def find_lora_targets(model: nn.Module, wanted: Sequence[str] = DEFAULT_LORA_TARGETS) -> list[str]:
    """The names in ``wanted`` that end some ``nn.Linear`` in ``model``, in ``wanted`` order."""
    present = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    }
    found = [name for name in wanted if name in present]
    if not found:
        linear = sorted(present)
        raise SystemExit(
            f"found none of the LoRA targets {list(wanted)} in this model; its linear layers "
            f"are named {linear}: pass some with --lora-targets"
        )
    return found
