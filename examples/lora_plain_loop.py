"""Fine-tune a local causal LM with LoRA under SPARD, in a plain PyTorch training loop.

    python examples/lora_plain_loop.py --model PATH --train gsm8k.jsonl \\
        --safe-pool safe_pool.jsonl --harmful attack.jsonl \\
        --eval-harmful harmful_test.jsonl --eval-utility gsm8k_test.jsonl --out run_spard

Add ``--no-defense`` for the plain fine-tuning baseline, ``--defense guardspace`` for GuardSpace's
adapters instead of LoRA (``guardspace+spard``: trained with SPAG). The only SPARD-specific line in
the loop is the optimizer: ``SPAGOptimizer`` runs its safety closure inside ``step()``. Everything else
(data, DPP selection, LoRA, evaluation) lives in ``finetune_common.py``, shared with
``hf_trainer.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from finetune_cli import parse_args
from finetune_common import Prepared, finish, prepare, spag_stats


def train(prep: Prepared) -> tuple[int, list[dict[str, float]]]:
    """Run ``prep.num_steps()`` optimizer steps; return the step count and SPAG's stats per step."""
    args, model, optimizer = prep.args, prep.model, prep.optimizer
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(
        prep.train_rows,
        batch_size=args.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=prep.collator,
    )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    total, step, history = prep.num_steps(), 0, []
    log_every = max(1, total // 10)
    while step < total:
        for batch in loader:
            batch = {k: v.to(prep.device) for k, v in batch.items()}
            loss = model(**batch).loss
            loss.backward()
            if args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()  # SPAG: utility step, then the safety projection if needed
            optimizer.zero_grad(set_to_none=True)
            step += 1
            line: dict[str, Any] = {"step": step, "loss": round(loss.item(), 4)}
            if prep.spag is not None:
                stats = spag_stats(prep.spag)
                history.append(stats)
                line.update(
                    safety_loss=round(stats["safety_loss"], 4), projected=bool(stats["projected"])
                )
            if step % log_every == 0 or step == total:
                print(line)
            if step == total:
                break
    return step, history


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    prep = prepare(parse_args(__doc__.splitlines()[0], argv))
    steps, history = train(prep)
    return finish(prep, steps, history)


if __name__ == "__main__":
    main()
