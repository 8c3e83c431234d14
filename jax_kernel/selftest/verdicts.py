"""What the self-test can say of one attack, and the table a deployer reads."""

from __future__ import annotations

CONTAINED = "contained"
POLICY = "allowed by policy"
ESCAPED = "NOT contained"

#: One attack's line: its name, its verdict and the evidence for it.
Row = tuple[str, str, str]


def table(rows: list[Row]) -> str:
    """The rows, aligned under an ``attack / result / evidence`` header."""
    width = max(len(r[0]) for r in rows)
    lines = [f"{'attack':<{width}}  {'result':<18} evidence", f"{'-' * width}  {'-' * 18} {'-' * 8}"]
    lines += [f"{a:<{width}}  {v:<18} {e}" for a, v, e in rows]
    return "\n".join(lines)
