"""Helpers shared by tests/ and tests/e2e/ (see each test file)."""

from __future__ import annotations


def _row(table, *keys: str) -> list[str]:
    return next(r for r in table.rows if all(k in r for k in keys))
