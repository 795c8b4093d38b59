"""Numbers are numbers: numpy scalars work wherever Python numbers do; True is not a number; flags
are bools. And a warning is shown once, not also through logging."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from dpp_select import EarlyStopWarning, greedy_dpp, relevance_scores, select
from spag_optim import SafetyBatches, SPAGOptimizer
from spag_optim.baselines import LisaOptimizer, PenaltyOptimizer


def spag(**kw):
    p = torch.nn.Parameter(torch.ones(3))
    return SPAGOptimizer(torch.optim.SGD([p], lr=0.1), lambda: (p**2).sum(), **kw)


def test_spag_takes_numpy_scalars_as_numbers():
    opt = spag(
        tau=np.float32(0.25),
        rho=np.float64(0.5),
        trust_region=np.float32(2.0),
        tolerance=np.int64(0),
        alpha_max=np.float16(1.0),
        eps=np.float32(0.0),
    )
    assert (opt.tau, opt.rho, opt.trust_region, opt.tolerance, opt.alpha_max, opt.eps) == (
        0.25,
        0.5,
        2.0,
        0.0,
        1.0,
        0.0,
    )
    assert all(type(v) is float for v in (opt.tau, opt.rho, opt.trust_region, opt.tolerance))
    opt.step()  # and steps with them
    assert opt.num_steps == 1
    penalty = PenaltyOptimizer(
        torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1),
        lambda: None,
        lam=np.float32(0.5),
        tau=np.float64(0.1),
    )
    assert (penalty.lam, penalty.tau) == (0.5, pytest.approx(0.1))
    assert SafetyBatches(list(range(5)), batch_size=np.int64(2), collate_fn=list).batch_size == 2
    with pytest.raises(ValueError, match="batch_size"):
        SafetyBatches(list(range(5)), batch_size=True, collate_fn=list)
    lisa = LisaOptimizer(
        torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1),
        lambda: None,
        alignment_steps=np.int64(2),
        finetune_steps=np.int32(3),
        rho=np.float32(1),
    )
    assert (lisa.alignment_steps, lisa.finetune_steps, lisa.rho) == (2, 3, 1.0)


@pytest.mark.parametrize("name", ["tau", "rho", "trust_region", "tolerance", "alpha_max", "eps"])
@pytest.mark.parametrize("flag", [True, np.bool_(True)])
def test_true_is_not_a_number(name, flag):
    with pytest.raises(TypeError, match=f"{name} must be a number"):
        spag(**{name: flag})


@pytest.mark.parametrize("value", ["no", 0, 1, None, np.bool_(False)])
def test_skip_if_safe_must_be_a_bool(value):
    with pytest.raises(TypeError, match="skip_if_safe must be True or False"):
        spag(skip_if_safe=value)


def embeddings(n, seed):
    return np.random.default_rng(seed).normal(size=(n, 4))


def test_selection_takes_numpy_scalars_for_ratio_beta_and_chunk_size():
    pool, target = embeddings(30, 0), embeddings(10, 1)
    q = relevance_scores(pool, target, chunk_size=7)
    np.testing.assert_array_equal(relevance_scores(pool, target, chunk_size=np.int64(7)), q)
    got = select(pool, target, ratio=np.float32(0.5), beta=np.float64(2.0))
    ref = select(pool, target, ratio=0.5, beta=2.0)
    np.testing.assert_array_equal(got.indices, ref.indices)
    assert got.k == 5
    np.testing.assert_array_equal(
        greedy_dpp(pool, 5, quality=q, beta=np.float32(2.0)),
        greedy_dpp(pool, 5, quality=q, beta=2.0),
    )


def test_selection_refuses_true_for_ratio_beta_and_chunk_size():
    pool, target = embeddings(30, 0), embeddings(10, 1)
    with pytest.raises(ValueError, match="ratio"):
        select(pool, target, ratio=True)
    with pytest.raises(ValueError, match="beta"):
        select(pool, target, k=3, beta=True)
    with pytest.raises(ValueError, match="chunk_size"):
        relevance_scores(pool, target, chunk_size=True)


def test_early_stop_is_warned_once_and_not_also_logged(caplog):
    x = np.random.default_rng(6).normal(size=(50, 3))  # rank 3: only 3 items have a gain
    with caplog.at_level(logging.DEBUG, logger="dpp_select"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert greedy_dpp(x, 10).size == 3
    assert [w.category for w in caught] == [EarlyStopWarning]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
