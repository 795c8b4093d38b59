import pytest


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide state (every Trainer builds an Accelerator): reset it before
    and after a test so that no test sees another's. Modules opt in with ``usefixtures``."""
    from accelerate.state import AcceleratorState, PartialState

    def reset():
        AcceleratorState._reset_state(True)
        PartialState._reset_state()

    reset()
    yield
    reset()
