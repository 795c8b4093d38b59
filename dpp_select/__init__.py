"""Relevance-Diversity DPP selection of safe data (SPARD, ICML 2026)."""
