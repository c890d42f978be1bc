"""Registered experiments (one module per chapter: the only chapter-specific code), the
results store and sweeps."""
