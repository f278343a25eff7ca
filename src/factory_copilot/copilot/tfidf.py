"""TF-IDF search over a plant's runbook passages: scikit-learn's TfidfVectorizer scores, in a few lines of Python.

The same weighting as ``TfidfVectorizer(token_pattern=..., ngram_range=(1, 2), sublinear_tf=True)``
(lower-cased tokens and their pairs, 1 + log tf, smoothed idf, unit-length rows, cosine by dot product),
without importing scikit-learn and scipy into the service for a few hundred passages: those two would
cost the running service more memory than everything else it loads.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np


class TfIdfIndex:
    """Passages (documents) indexed by their words and word pairs; ``scores(query)`` is the cosine to each."""

    def __init__(self, documents: list[str], token_pattern: str, ngram_range: tuple[int, int] = (1, 2)):
        self._token = re.compile(token_pattern)
        self._ngrams = ngram_range
        counts = [Counter(self._terms(d)) for d in documents]
        df = Counter(term for c in counts for term in c)
        n = len(documents)
        self.idf = {t: math.log((1 + n) / (1 + k)) + 1.0 for t, k in df.items()}
        self.n_documents = n
        # postings: term -> [(document, weight)], documents in order
        self._postings: dict[str, list[tuple[int, float]]] = {}
        for i, c in enumerate(counts):
            for term, w in self._weights(c).items():
                self._postings.setdefault(term, []).append((i, w))

    def _terms(self, text: str) -> list[str]:
        tokens = self._token.findall(text.lower())
        lo, hi = self._ngrams
        out = list(tokens) if lo <= 1 else []
        for k in range(max(lo, 2), hi + 1):
            out.extend(" ".join(tokens[i : i + k]) for i in range(len(tokens) - k + 1))
        return out

    def _weights(self, counts: Counter) -> dict[str, float]:
        """Sublinear tf times idf, scaled to unit length (terms unknown to the index dropped)."""
        w = {t: (math.log(c) + 1.0) * self.idf[t] for t, c in sorted(counts.items()) if t in self.idf}
        norm = math.sqrt(sum(v * v for v in w.values()))
        return {t: v / norm for t, v in w.items()} if norm > 0 else {}

    def scores(self, query: str) -> np.ndarray:
        """Cosine similarity of the query to every document (0 where they share no term)."""
        out = np.zeros(self.n_documents)
        for term, q in self._weights(Counter(self._terms(query))).items():
            for i, w in self._postings[term]:
                out[i] += w * q
        return out
