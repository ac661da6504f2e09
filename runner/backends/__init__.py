"""Triton backends: docker (container), process (local binary), mock (no Triton)."""
