"""Glue between SPAGOptimizer and training frameworks (each module imports its framework lazily:
``import spag_optim`` never needs transformers)."""
