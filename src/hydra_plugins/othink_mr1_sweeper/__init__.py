"""Hydra plugins must live in the `hydra_plugins` namespace package; this one holds the cell sweeper."""
