"""Fine-tune a local causal LM with LoRA under SPARD, with Hugging Face ``Trainer``.

    python examples/hf_trainer.py --model PATH --train gsm8k.jsonl \\
        --safe-pool safe_pool.jsonl --harmful attack.jsonl \\
        --eval-harmful harmful_test.jsonl --eval-utility gsm8k_test.jsonl --out run_spard

Same options, data, selection and evaluation as ``lora_plain_loop.py`` (both use
``finetune_common.py``); only the loop differs. Two lines make it SPARD:
``optimizers=(spag_optimizer, None)`` (the Trainer builds its scheduler on it and calls its
``step()``) and ``add_spag_logging(trainer)`` (SPAG's statistics in the Trainer's logs).
``--defense guardspace`` / ``guardspace+spard`` swap LoRA for GuardSpace's adapters.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from finetune_common import Prepared, finish, parse_args, prepare


def train(prep: Prepared) -> tuple[int, list[dict[str, float]]]:
    """Train with ``Trainer``; return the step count and SPAG's stats per step."""
    from transformers import Trainer, TrainingArguments

    from spag_optim.integrations.hf import add_spag_logging

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
    # The safety closure was built on prep.model, the object whose parameters the optimizer
    # holds; the Trainer may wrap it (DataParallel, accelerate) but trains those same parameters.
    trainer = Trainer(
        model=prep.model,
        args=training_args,
        train_dataset=prep.train_rows,
        data_collator=prep.collator,
        optimizers=(prep.optimizer, None),
    )
    logging_callback = add_spag_logging(trainer) if prep.spag is not None else None
    result = trainer.train()
    history = logging_callback.history if logging_callback is not None else []
    return int(result.global_step), history


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    prep = prepare(parse_args(__doc__.splitlines()[0], argv))
    steps, history = train(prep)
    return finish(prep, steps, history)


if __name__ == "__main__":
    main()
