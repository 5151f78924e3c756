"""The numpy MiniLM gives sentence-transformers' vectors, and nothing loads before
it is needed (no torch ever; numpy and the weights only on first use)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from celeriac.memory import MiniLMEmbedder
from celeriac.memory.minilm import MAX_TOKENS, model_dir

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "fixtures" / "minilm_reference.json"
TEXTS = [
    "The deploy failed because the database migration timed out.",
    "ok",
    "Ünïcödé café, naïve résumé; 東京 and emoji 🚀 too.",
    "word " * 400,  # longer than the model's 256 tokens: truncated, as in the reference
    "",
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_vectors_match_sentence_transformers(embedder: MiniLMEmbedder) -> None:
    # The reference vectors came from sentence-transformers on torch (the path we
    # replaced), once; torch is not installed here, so they are kept as a fixture.
    reference = json.loads(REFERENCE.read_text())
    assert reference["texts"] == TEXTS
    assert reference["max_seq_length"] == MAX_TOKENS
    expected = np.array(reference["vectors"], dtype=np.float32)
    ours = embedder.embed(TEXTS)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    assert np.abs(ours - expected).max() < 1e-4
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_a_text_embeds_the_same_alone_and_in_a_padded_batch(embedder: MiniLMEmbedder) -> None:
    alone = embedder.embed([TEXTS[0]])[0]
    batched = embedder.embed(TEXTS + [TEXTS[0]] * 40)  # longer texts, several batches
    assert np.abs(batched[0] - alone).max() < 1e-5
    assert np.abs(batched[-1] - alone).max() < 1e-5
    assert embedder.embed([]).shape == (0, 384)


def test_nothing_heavy_loads_until_recall_runs(tmp_path: Path) -> None:
    """Services, the toolbox and recall's spec cost a worker nothing; the first call
    brings numpy and the weights, and torch never comes."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from celeriac.services import Services
        from celeriac.tools.base import ToolContext
        from config.settings import Settings

        services = Services(Settings(database_url="sqlite:///{tmp_path}/s.db"))
        registry = services.toolbox._builtins
        specs = registry.specs(["recall"])
        before = {{m: m in sys.modules for m in ("numpy", "torch", "tokenizers")}}
        result = registry.execute("recall", {{"query": "anything"}}, ToolContext("t", "r", "s"))
        after = {{m: m in sys.modules for m in ("numpy", "torch", "tokenizers")}}
        print(json.dumps({{"before": before, "after": after, "result": result.content,
                          "error": result.is_error, "spec": specs[0]["name"]}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["spec"] == "recall"
    assert report["before"] == {"numpy": False, "torch": False, "tokenizers": False}
    assert report["after"] == {"numpy": True, "torch": False, "tokenizers": True}
    assert not report["error"] and "Nothing in earlier conversations" in report["result"]


def test_gelu_is_the_exact_erf_form() -> None:
    import math

    from celeriac.memory.minilm import _gelu

    x = np.linspace(-9, 9, 20_001, dtype=np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(float)])
    got = _gelu(x)
    assert got.dtype == np.float32
    assert np.abs(got - exact).max() < 1e-6
    # The tanh approximation, which we do not use, is off by far more.
    tanh = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert np.abs(tanh - exact).max() > 1e-4


def test_threads_racing_on_first_use_load_the_model_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from celeriac.memory import minilm

    loads: list[int] = []

    class CountedMiniLM(minilm.MiniLM):
        def __init__(self, directory: Path):
            loads.append(1)
            super().__init__(directory)

    monkeypatch.setattr(minilm, "MiniLM", CountedMiniLM)
    embedder = MiniLMEmbedder()
    assert not embedder.loaded
    start = threading.Barrier(6)
    results: dict[int, np.ndarray] = {}

    def worker(i: int) -> None:
        start.wait(timeout=30)
        results[i] = embedder.embed([TEXTS[0], TEXTS[i % 3]])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 6 and embedder.loaded
    assert loads == [1]
    for i, vectors in results.items():
        assert np.abs(vectors[0] - results[0][0]).max() < 1e-5, i


def test_weights_are_mapped_not_copied() -> None:
    """Worker processes on one host share the model's pages only if nothing copies
    them: every big tensor must stay a view of the file's memory map."""
    from celeriac.memory.minilm import map_safetensors

    tensors = map_safetensors(model_dir() / "model.safetensors")
    word = tensors["embeddings.word_embeddings.weight"]
    assert word.shape == (30522, 384) and word.dtype == np.float32
    assert not word.flags.owndata and not word.flags.writeable and word.flags.aligned
    base = word
    while isinstance(base, np.ndarray) and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)
    assert all(not t.flags.owndata for t in tensors.values())
    assert "embeddings.position_ids" not in tensors  # int64, unused
