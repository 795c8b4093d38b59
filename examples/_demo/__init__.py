"""Building blocks of ``examples/quickstart.py``: synthetic data, a tiny model, the two training
stages, safe-data selection, evaluation and the report.

They live here, one concept per module, so that the quickstart itself reads like the story it tells.
Nothing in this package is part of the installed library; it exists for the demo and its tests.
"""
