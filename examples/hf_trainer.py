"""Fine-tune a local causal LM with LoRA under SPARD, with Hugging Face ``Trainer``.

    python examples/hf_trainer.py --model PATH --train gsm8k.jsonl \\
        --safe-pool safe_pool.jsonl --harmful attack.jsonl \\
        --eval-harmful harmful_test.jsonl --eval-utility gsm8k_test.jsonl --out run_spard

Same options, data, selection and evaluation as ``lora_plain_loop.py`` (both use
``finetune_common.py``); only the loop differs. Two lines make it SPARD:
``optimizers=(spag_optimizer, None)`` (the Trainer builds its scheduler on it and calls its
``step()``) and ``attach_spag(trainer)`` (binds SPAG's ``TrainerSafetyClosure`` to the trainer's
model, device and GradScaler, and logs SPAG's statistics in the Trainer's logs).
``--defense guardspace`` / ``guardspace+spard`` swap LoRA for GuardSpace's adapters.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from finetune_cli import parse_args
from finetune_common import Prepared, finish, prepare


def train(prep: Prepared) -> tuple[int, list[dict[str, float]]]:
    """Train with ``Trainer``; return the step count and SPAG's stats per step."""
    from transformers import Trainer, TrainingArguments

    from spag_optim.integrations.trainer import attach_spag

    args = prep.args
    total = prep.num_steps()
    training_args = TrainingArguments(
        output_dir=os.path.join(args.out, "trainer"),
        per_device_train_batch_size=args.batch_size,
        max_steps=total,
        learning_rate=args.lr,
        lr_scheduler_type="constant",  # as in the plain loop; any scheduler works on SPAG
        max_grad_norm=args.max_grad_norm,
        logging_steps=max(1, total // 10),
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=prep.device.type == "cpu",
        remove_unused_columns=False,  # the rows are already token ids and labels
        disable_tqdm=True,
    )
    # The Trainer may wrap prep.model (DataParallel, accelerate) but trains the parameters the
    # optimizer holds; attach_spag points the safety closure at that wrapped model.
    trainer = Trainer(
        model=prep.model,
        args=training_args,
        train_dataset=prep.train_rows,
        data_collator=prep.collator,
        optimizers=(prep.optimizer, None),
    )
    logging_callback = attach_spag(trainer) if prep.spag is not None else None
    result = trainer.train()
    history = logging_callback.history if logging_callback is not None else []
    return int(result.global_step), history


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    prep = prepare(parse_args(__doc__.splitlines()[0], argv), for_trainer=True)
    steps, history = train(prep)
    return finish(prep, steps, history)


if __name__ == "__main__":
    main()
