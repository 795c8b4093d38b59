"""Builders the tests share: tiny models, toy problems, literal references, the defense registry.

Importable as ``helpers`` because ``pyproject.toml`` puts ``tests/`` on the path
(``[tool.pytest.ini_options] pythonpath``); a test imports ``from helpers.tiny_lm import ...``.
"""
