"""Stage 1: train the tiny Llama from scratch into an "aligned" model: it solves word problems,
answers benign how-to requests, and refuses every harmful request.

The result is cached (safetensors) under a key made of everything it depends on, so a second run
of the demo starts from the same weights in a second instead of retraining. The cache entry is
trained under a lock beside it and renamed into place whole, so two processes that need the same
aligned model (the sweep's workers, two sweeps at once) train it once and never read half a file.

The quickstart's default seeds also come with shipped aligned models (:data:`SHIPPED`, checked
against ``SHA256SUMS``). Stage 1 is where numeric noise enters: the same seed trained under other
vector kernels ends up a different aligned model (issue "Evidence a user can reproduce"), while
the attack stage from one aligned model reproduces across kernels. Loading the shipped weights
makes the quickstart's numbers the same on any machine; its verdicts still rest on the spread
across the seeds' aligned models, and ``--no-cache`` trains them on the user's machine instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from spard_io import exclusive_lock

from .config import DemoConfig
from .dataset import DemoData
from .encoding import encode
from .model import ModelSize, build_model
from .training import train

__all__ = ["cache_key", "aligned_model", "SHIPPED", "verify_shipped", "weights_sha256"]

logger = logging.getLogger(__name__)

#: Aligned models trained once (default sizes, seeds 0-4), one ``aligned-<cache key>`` folder each.
SHIPPED = Path(__file__).resolve().parent / "aligned"


def cache_key(config: DemoConfig, data: DemoData, numerics: str = "native") -> str:
    """Hash of the alignment settings, the vocabulary and the numerics setting (``numerics.py``;
    ``native`` adds nothing, so the native keys stay as they were): equal keys mean identical
    weights (under ``native``, on the same kernels)."""
    fields = {
        "config": config.alignment_fields(),
        "vocab": sorted(data.tokenizer.get_vocab().items()),
    }
    if numerics != "native":
        fields["numerics"] = numerics
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _align(config: DemoConfig, data: DemoData, progress: bool) -> LlamaForCausalLM:
    tok = data.tokenizer
    model = build_model(
        tok, ModelSize(hidden=config.hidden, layers=config.layers), seed=config.seed
    )
    rows = encode(tok, data.alignment)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.align_lr)
    steps = config.align_epochs * -(-len(rows) // config.align_batch)
    # One-cycle warm-up then decay: a from-scratch transformer trained at a flat 3e-3 plateaus early.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.align_lr, total_steps=steps, pct_start=0.1
    )
    train(
        model,
        rows,
        optimizer,
        epochs=config.align_epochs,
        batch_size=config.align_batch,
        pad_id=tok.pad_token_id,
        seed=config.seed,
        scheduler=scheduler,
        desc="stage 1: alignment",
        progress=progress,
    )
    return model


def weights_sha256(folder: Path) -> str:
    """The SHA-256 of an aligned model's weights file (what results record and ``SHA256SUMS``
    lists)."""
    return hashlib.sha256((Path(folder) / "model.safetensors").read_bytes()).hexdigest()


def verify_shipped(folder: Path) -> None:
    """Raise ValueError unless every file of the shipped ``folder`` matches ``SHA256SUMS``."""
    sums = dict(
        reversed(line.split(maxsplit=1))
        for line in (folder.parent / "SHA256SUMS").read_text().splitlines()
    )
    for path in sorted(folder.iterdir()):
        name = f"{folder.name}/{path.name}"
        if hashlib.sha256(path.read_bytes()).hexdigest() != sums.get(name):
            raise ValueError(
                f"{path} does not match its SHA-256 in {folder.parent / 'SHA256SUMS'}; restore it "
                "(git checkout) or train the aligned model on this machine with --no-cache"
            )


def aligned_model(
    config: DemoConfig,
    data: DemoData,
    cache_dir: Path,
    *,
    use_cache: bool = True,
    shipped: bool = False,
    progress: bool = True,
    numerics: str = "native",
) -> tuple[LlamaForCausalLM, Path, bool]:
    """The aligned model, its folder, and whether it was loaded (cache or shipped) rather than trained.

    With ``shipped=True`` a model of :data:`SHIPPED` with the same key is loaded (after its
    checksum) before the cache is looked at. With ``use_cache=False`` the model is retrained and the
    cache entry overwritten (shipped models are then ignored too). ``numerics`` is the setting the
    caller trains under (``numerics.py``): part of the key, so the two never share an entry.
    """
    key = f"aligned-{cache_key(config, data, numerics)}"
    if use_cache and shipped and (SHIPPED / key / "model.safetensors").is_file():
        verify_shipped(SHIPPED / key)
        model = LlamaForCausalLM.from_pretrained(SHIPPED / key)
        model.eval()
        return model, SHIPPED / key, True
    folder = Path(cache_dir) / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder.with_name(folder.name + ".lock")):
        if use_cache and (folder / "model.safetensors").is_file():
            logger.info("loading the aligned model from %s", folder)
            model = LlamaForCausalLM.from_pretrained(folder)
            model.eval()
            return model, folder, True
        model = _align(config, data, progress)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            model.save_pretrained(staging, safe_serialization=True)
            shutil.rmtree(folder, ignore_errors=True)  # --no-cache: the entry is replaced whole
            staging.rename(folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return model, folder, False
