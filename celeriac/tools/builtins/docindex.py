"""A small BM25 index over the sections of a directory of Markdown files.

A few dozen short documents do not need a search engine or embeddings: BM25 over
heading-delimited sections, with a light plural stemmer and a stopword list, finds
the right section for a question phrased in the docs' own vocabulary.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# Standard BM25 constants: term-frequency saturation and length normalisation.
K1 = 1.5
B = 0.75

_WORD = re.compile(r"[a-z0-9]+")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# SIM905 is ignored below: a word list reads better as words than as quoted strings.
_STOPWORDS = frozenset(
    """a an and are as at be by can do does for from how i if in is it its me my no not of
    on or our so that the then there this to use we what when where which who why will with
    you your""".split()  # noqa: SIM905
)


@dataclass(frozen=True)
class Passage:
    title: str  # the document's "# " title
    heading: str  # the section heading, or the title for text before any section
    path: str  # relative to the docs directory
    text: str


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float


def tokenize(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


def _stem(word: str) -> str:
    # Plurals only: enough for "priorities"/"priority" and "budgets"/"budget",
    # and predictable, which a search a model drives needs more than recall.
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def split_sections(path: Path, root: Path) -> list[Passage]:
    """One passage per heading of level 1 or 2; deeper headings stay in their section."""
    relative = path.relative_to(root).as_posix()
    fallback = path.stem.replace("-", " ").replace("_", " ").title()
    # (heading level, heading, lines); level 0 holds the text before any heading.
    sections: list[tuple[int, str, list[str]]] = [(0, "", [])]
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence  # a "# comment" in a code block is not a heading
        match = None if in_fence else _HEADING.match(line)
        if match and len(match.group(1)) <= 2:
            sections.append((len(match.group(1)), match.group(2), []))
        else:
            sections[-1][2].append(line)
    # The title is the first "# " heading; text before any heading belongs to it.
    title = next((h for level, h, _ in sections if level == 1 and h), fallback)
    passages = []
    for _, heading, body in sections:
        text = "\n".join(body).strip()
        if text:
            passages.append(Passage(title, heading or title, relative, text))
    return passages


class DocIndex:
    def __init__(self, passages: list[Passage]):
        self.passages = passages
        # Headings and titles count as body text too: they name what a section is about.
        self._terms = [
            Counter(tokenize(f"{p.title} {p.heading} {p.heading} {p.text}")) for p in passages
        ]
        self._lengths = [sum(terms.values()) for terms in self._terms]
        self._average = sum(self._lengths) / len(self._lengths) if passages else 0.0
        frequency: Counter[str] = Counter()
        for terms in self._terms:
            frequency.update(terms.keys())
        n = len(passages)
        self._idf = {t: math.log(1 + (n - df + 0.5) / (df + 0.5)) for t, df in frequency.items()}

    @classmethod
    def from_directory(cls, root: Path) -> DocIndex:
        files = sorted(p for p in root.rglob("*.md") if p.is_file())
        return cls([passage for path in files for passage in split_sections(path, root)])

    def search(self, query: str, limit: int) -> list[Hit]:
        terms = set(tokenize(query))
        hits: list[Hit] = []
        for passage, counts, length in zip(self.passages, self._terms, self._lengths, strict=True):
            score = 0.0
            for term in terms & counts.keys():
                tf = counts[term]
                norm = tf + K1 * (1 - B + B * length / self._average)
                score += self._idf[term] * tf * (K1 + 1) / norm
            if score > 0:
                hits.append(Hit(passage, score))
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return hits[:limit]
