"""SPAG: safety projection after each optimizer step (SPARD, ICML 2026)."""
