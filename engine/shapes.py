"""Padded sizes for the batch dimensions of the model's matrix products.

On CPU in bfloat16, oneDNN builds and keeps a kernel for every matrix shape
it meets, and a streaming engine meets a new one almost every forward (the
number of tokens in flight, of encoder windows, of conv chunks). The soak
benchmark saw a model replica grow ~300 MB/hour that way, with no Python
object growing; 600 distinct row counts through one bfloat16 linear alone
cost ~400 MB (benchmarks/soak.py, docs/engine.md). Padding those dimensions
to a small ladder of sizes bounds the set of shapes, and so the memory, at
a cost of at most one step of the ladder in wasted rows (< 12.5% past 64).
"""

from __future__ import annotations


def padded(n: int) -> int:
    """The smallest ladder size >= n: multiples of 8 up to 64, then eight sizes per doubling."""
    if n < 0:
        raise ValueError(f"a size cannot be negative: {n}")
    step = max(8, 1 << max(0, (n - 1).bit_length() - 4))
    return -(-n // step) * step
