"""Cut a conversation into passages the embedder can see whole.

MiniLM reads at most 256 word pieces; a passage longer than that would be embedded
from its beginning only. 160 words stay under the limit for ordinary English (about
1.3 pieces a word), and the overlap keeps a sentence that straddles a cut findable
from either side.
"""

from __future__ import annotations

WORDS_PER_CHUNK = 160
OVERLAP_WORDS = 32


def chunk_text(
    text: str, *, size: int = WORDS_PER_CHUNK, overlap: int = OVERLAP_WORDS
) -> list[str]:
    """Overlapping windows of whole words; [] for blank text."""
    if not 0 <= overlap < size:
        raise ValueError("overlap must be at least 0 and smaller than size")
    words = text.split()
    if not words:
        return []
    chunks = []
    step = size - overlap
    for start in range(0, len(words), step):
        chunks.append(" ".join(words[start : start + size]))
        if start + size >= len(words):
            break
    return chunks
