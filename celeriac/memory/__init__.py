"""Long-term recall: embeddings of earlier threads, searched per tenant.

Quickstart::

    memory = MemoryIndex(db, MiniLMEmbedder())
    memory.remember("acme", thread_id, run_id, f"{user_input}\n\n{answer}")
    memory.search("acme", "what did we decide about the invoice format?", k=3)

Nothing heavy is imported here: numpy, the tokenizer and the model's weights enter
a process on its first ``remember`` or ``search``.
"""

from celeriac.memory.chunking import chunk_text
from celeriac.memory.embedder import Embedder, MiniLMEmbedder
from celeriac.memory.index import Hit, MemoryIndex

__all__ = ["Embedder", "Hit", "MemoryIndex", "MiniLMEmbedder", "chunk_text"]
