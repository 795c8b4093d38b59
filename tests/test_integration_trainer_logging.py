"""SPAGLoggingCallback: SPAG's per-step stats summarised into the Trainer's log entries."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from transformers import TrainerControl, TrainerState, TrainingArguments  # noqa: E402

from spag_optim.integrations.trainer import SPAGLoggingCallback, find_spag_optimizer  # noqa: E402
from spag_optim.warnings import NotSPAGOptimizerWarning  # noqa: E402


def FakeSPAG():
    """A real SPAGOptimizer whose ``last_stats`` the tests set (all the callback reads)."""
    from spag_optim import SPAGOptimizer

    p = torch.zeros(1, requires_grad=True)
    return SPAGOptimizer(torch.optim.SGD([p], lr=0.1), lambda: p.sum())


STEPS = [
    {"safety_loss": torch.tensor(0.9), "projected": True, "alpha": 0.5, "safety_grad_norm": 2.0},
    {"safety_loss": 0.1, "projected": False, "alpha": 0.0, "safety_grad_norm": 0.0},
    {
        "safety_loss": 0.5,
        "projected": torch.tensor(True),
        "alpha": torch.tensor(0.25),
        "safety_grad_norm": 1.0,
    },
]


def run_steps(callback, optimizer, state, steps):
    args = TrainingArguments(output_dir="unused", report_to=[])
    for stats in steps:
        optimizer_inner = find_spag_optimizer(optimizer)
        optimizer_inner.last_stats = stats
        if bool(stats["projected"]):  # what the optimizer's own counter does on such a step
            optimizer_inner._safety_gradient.projections = torch.tensor(
                optimizer_inner.num_projections + 1
            )
        state.global_step += 1
        callback.on_step_end(args, state, TrainerControl(), optimizer=optimizer)
    return args


def test_on_log_adds_the_summary_of_the_steps_since_the_last_log():
    spag, state = FakeSPAG(), TrainerState()
    # Accelerate wraps the optimizer: the callback must look through ``.optimizer``.
    wrapped = SimpleNamespace(optimizer=spag)
    callback = SPAGLoggingCallback()
    args = run_steps(callback, wrapped, state, STEPS)
    logs = {"loss": 1.0}
    state.log_history.append({**logs, "step": state.global_step})
    callback.on_log(args, state, TrainerControl(), logs=logs)

    expected = {
        "spag/safety_loss": (0.9 + 0.1 + 0.5) / 3,
        "spag/projected": 2 / 3,
        "spag/alpha": (0.5 + 0.0 + 0.25) / 3,
        "spag/projections": 2,
    }
    for key, value in expected.items():
        assert math.isclose(logs[key], value, rel_tol=1e-6), key
        assert math.isclose(state.log_history[-1][key], value, rel_tol=1e-6), key
    assert len(callback.history) == 3 and callback.history[2]["alpha"] == 0.25

    # The next entry summarises only the newer steps; the projection count keeps growing.
    run_steps(callback, wrapped, state, STEPS[:1])
    logs = {}
    callback.on_log(args, state, TrainerControl(), logs=logs)
    assert math.isclose(logs["spag/safety_loss"], 0.9, rel_tol=1e-6)
    assert logs["spag/projected"] == 1.0 and logs["spag/projections"] == 3

    # No optimizer step since the last entry (e.g. an evaluation log): nothing is added.
    logs = {}
    callback.on_log(args, state, TrainerControl(), logs=logs)
    assert logs == {}


def test_a_plain_optimizer_is_ignored_with_one_warning():
    callback = SPAGLoggingCallback()
    plain = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    args = TrainingArguments(output_dir="unused", report_to=[])
    with pytest.warns(NotSPAGOptimizerWarning, match="not a SPAG optimizer") as caught:
        for _ in range(3):
            callback.on_step_end(args, TrainerState(), TrainerControl(), optimizer=plain)
    assert callback.history == []
    assert sum(issubclass(w.category, NotSPAGOptimizerWarning) for w in caught) == 1


def test_an_explicit_optimizer_wins_over_the_trainers():
    spag = FakeSPAG()
    spag.last_stats = STEPS[1]
    callback = SPAGLoggingCallback(spag)
    args = TrainingArguments(output_dir="unused", report_to=[])
    callback.on_step_end(args, TrainerState(), TrainerControl(), optimizer=object())
    assert callback.history == [{k: float(v) for k, v in STEPS[1].items()}]


def test_a_baseline_with_last_stats_is_not_taken_for_spag():
    """LisaOptimizer also has last_stats (with a string "state"): SPAG is recognised by type."""
    from spag_optim.baselines import LisaOptimizer

    p = torch.zeros(1, requires_grad=True)
    lisa = LisaOptimizer(torch.optim.SGD([p], lr=0.1), lambda: p.sum())
    lisa.last_stats = {"state": "alignment", "safety_loss": 0.5, "proximal": 0.0}
    assert find_spag_optimizer(SimpleNamespace(optimizer=lisa)) is None
    callback = SPAGLoggingCallback()
    args = TrainingArguments(output_dir="unused", report_to=[])
    with pytest.warns(NotSPAGOptimizerWarning, match="not a SPAG optimizer"):
        callback.on_step_end(args, TrainerState(), TrainerControl(), optimizer=lisa)
    assert callback.history == []


def test_logged_projections_continue_after_a_resume():
    """``spag/projections`` is the optimizer's own counter, restored from its checkpoint."""
    from spag_optim import SPAGOptimizer

    def build():
        p = torch.ones(2, requires_grad=True)
        return p, SPAGOptimizer(torch.optim.SGD([p], lr=0.1), lambda: (p**2).sum(), tau=0.0)

    def run(callback, p, opt, state, steps):
        args = TrainingArguments(output_dir="unused", report_to=[])
        for _ in range(steps):
            opt.zero_grad()
            p.sum().backward()
            opt.step()
            state.global_step += 1
            callback.on_step_end(args, state, TrainerControl(), optimizer=opt)
        logs = {}
        callback.on_log(args, state, TrainerControl(), logs=logs)
        return logs

    p, opt = build()
    assert run(SPAGLoggingCallback(), p, opt, TrainerState(), 3)["spag/projections"] == 3
    p2, resumed = build()
    resumed.load_state_dict(opt.state_dict())
    logs = run(SPAGLoggingCallback(), p2, resumed, TrainerState(global_step=3), 2)
    assert logs["spag/projections"] == 5 and logs["spag/projected"] == 1.0
