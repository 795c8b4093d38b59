"""SafeInstr mixing: counts, determinism, no copies, clear errors."""

import pytest
import torch

from spag_optim.baselines import SafeInstrDataset, safeinstr_mix

FINETUNE = [f"task-{i}" for i in range(200)]
SAFE = [f"safe-{i}" for i in range(50)]


def test_default_fraction_mixes_three_percent_of_the_finetuning_size():
    mixed = SafeInstrDataset(FINETUNE, SAFE, seed=0)
    assert mixed.num_safe == 6 and len(mixed) == 206
    rows = [mixed[i] for i in range(len(mixed))]
    assert sorted(r for r in rows if r.startswith("task")) == sorted(FINETUNE)
    safe_rows = [r for r in rows if r.startswith("safe")]
    assert len(safe_rows) == len(set(safe_rows)) == 6  # drawn without replacement
    assert [mixed.is_safe(i) for i in range(len(mixed))] == [r.startswith("safe") for r in rows]
    assert [SAFE[j] for j in mixed.safe_pool_indices] == safe_rows


def test_mix_is_a_function_of_the_seed():
    a = safeinstr_mix(FINETUNE, SAFE, fraction=0.1, seed=3)
    assert a == safeinstr_mix(FINETUNE, SAFE, fraction=0.1, seed=3)
    assert a != safeinstr_mix(FINETUNE, SAFE, fraction=0.1, seed=4)
    assert a[:5] != FINETUNE[:5]  # interleaved, not appended


def test_unshuffled_mix_appends_and_works_with_a_dataloader():
    mixed = SafeInstrDataset(list(range(10)), [100, 101, 102], fraction=0.2, shuffle=False)
    assert [mixed[i] for i in range(len(mixed))][:10] == list(range(10))
    assert all(mixed.is_safe(i) for i in (10, 11)) and len(mixed) == 12
    batches = list(torch.utils.data.DataLoader(mixed, batch_size=5))
    assert sum(len(b) for b in batches) == 12


def test_zero_fraction_is_the_original_data():
    assert safeinstr_mix(FINETUNE, SAFE, fraction=0, shuffle=False) == FINETUNE


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"fraction": -0.1}, ValueError, ">= 0"),
        ({"fraction": float("nan")}, ValueError, "finite"),
        ({"fraction": "3%"}, TypeError, "number"),
        ({"fraction": 0.5}, ValueError, "safe pool has 50"),
    ],
)
def test_bad_input_fails_clearly(kwargs, error, match):
    with pytest.raises(error, match=match):
        SafeInstrDataset(FINETUNE, SAFE, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        SafeInstrDataset([], SAFE)
