"""MinHash near-duplicate kernel: shingles, signatures, LSH banding, verification, union-find.

Plain functions over numpy arrays; the Beam stage in ``filters.minhash`` only wires them together.

Signatures are bit-compatible with ``datasketch.MinHash`` given the same token hashes, ``num_perm`` and
``seed``: ``m = MinHash(num_perm, seed, scheme=S); m.update_batch(shingles(text, ...))`` leaves in
``m.hashvalues`` the values of our signature, and ``MinHash(seed=seed, hashvalues=signature, scheme=S)``
loads ours into datasketch's LSH and storage back ends. Two permutation schemes:

- ``affine32`` (datasketch >= 2.0's default): token hash -> MurmurHash3 32-bit finalizer -> ``a*h + b mod
  2^32`` with odd ``a``; ``a`` and ``b`` drawn from ``np.random.RandomState(seed)``.
- ``legacy`` (datasketch < 2.0, and ``scheme="legacy"`` in 2.x): ``(a*h + b) mod (2^61 - 1)`` computed in
  wrapping uint64 arithmetic exactly as datasketch does, then the low 32 bits.

Token hashes: ``sha1`` (datasketch's default ``sha1_hash32``: the first 4 bytes of SHA-1, little-endian) or
``xxh32`` (``xxhash.xxh32_intdigest``, several times cheaper; pass ``hashfunc=xxhash.xxh32_intdigest`` to
datasketch).

A batch of texts is processed at once: the canonical texts are joined into one buffer, shingle offsets are
found with numpy, the shingle bytes are cut and hashed with one C-level call each (SHA-1 has no batch API,
and SHA-1 written in numpy is slower than OpenSSL's), then one (permutations x shingles) product per chunk
and a segmented minimum give every document's signature. No Python-level loop runs per shingle.
"""

from __future__ import annotations

import functools
import hashlib
import re
from operator import methodcaller
from typing import Iterable, Sequence

import numpy as np
import xxhash

MERSENNE_PRIME_61 = np.uint64((1 << 61) - 1)
LOW_32_BITS = np.uint64((1 << 32) - 1)
MAX_HASH_32 = np.uint32((1 << 32) - 1)
SCHEMES = ("affine32", "legacy")
TOKEN_HASHES = ("sha1", "xxh32")
SHINGLE_KINDS = ("word", "char")

_NON_WORD = re.compile(r"\W+")
_NON_ASCII_RUN = re.compile(rb"[\x80-\xff]+")
_SPACE_BYTE = 32
_NEWLINE_BYTE = 10
_UTF8_CONTINUATION_MASK = 0xC0
_UTF8_CONTINUATION_BITS = 0x80
# Permuted values computed at once (num_perm x shingles): ~2 MB of uint64, cache-friendly and cheap to
# allocate.
_PERMUTE_BLOCK_VALUES = 1 << 18


# ---------------------------------------------------------------------------------------------- shingles

# ASCII bytes that are not word characters (\w) -> space, upper case -> lower case; bytes >= 0x80 unchanged.
_ASCII_WORD_TABLE = bytes(
    byte + 32 if 65 <= byte <= 90 else byte if (48 <= byte <= 57 or 97 <= byte <= 122 or byte == 95) else 32
    for byte in range(128)) + bytes(range(128, 256))


def _non_ascii_words(run: re.Match) -> bytes:
    return _NON_WORD.sub(" ", run.group().decode("utf-8", "surrogatepass")).encode("utf-8", "surrogatepass")


def canonical_text(text: str, kind: str) -> bytes:
    r"""The UTF-8 text that shingles are cut from: case-folded; word shingles: the words (runs of ``\w``)
    joined by one space, punctuation dropped; char shingles: runs of whitespace become one space.

    The word rule is ``re.sub(r"\W+", " ", text.casefold()).strip()``, computed with a byte table for ASCII
    and the regex only on runs of non-ASCII characters (a run of UTF-8 bytes >= 0x80 never splits a
    character): ~3x faster than the regex over the whole text, and identical."""
    if kind == "word":
        if text.isascii():
            return b" ".join(text.encode("ascii").translate(_ASCII_WORD_TABLE).split())
        folded = text.casefold().encode("utf-8", "surrogatepass").translate(_ASCII_WORD_TABLE)
        return b" ".join(_NON_ASCII_RUN.sub(_non_ascii_words, folded).split())
    if kind == "char":
        return " ".join(text.casefold().split()).encode("utf-8", "surrogatepass")
    raise ValueError(f"unknown shingle kind {kind!r}; expected one of {SHINGLE_KINDS}")


def batch_shingle_spans(texts: Sequence[str], kind: str,
                        ngram: int) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """Where every shingle of every text lies, computed for the whole batch in numpy.

    Returns (buffer, starts, ends, counts): the canonical texts joined by newlines (which no canonical text
    contains), the byte offsets of each shingle in text order, and how many shingles each text has. A word
    shingle is ``ngram`` consecutive words joined by one space; a char shingle ``ngram`` consecutive code
    points. A text with fewer than ``ngram`` units (but at least one) has one shingle: itself."""
    if ngram < 1:
        raise ValueError("ngram must be at least 1")
    num_docs = len(texts)
    buffer = b"\n".join([canonical_text(text, kind) for text in texts])
    raw = np.frombuffer(buffer, dtype=np.uint8)
    newlines = np.flatnonzero(raw == _NEWLINE_BYTE)
    if kind == "word":
        separators = np.flatnonzero((raw == _SPACE_BYTE) | (raw == _NEWLINE_BYTE))
        unit_starts = np.concatenate(([0], separators + 1))
        unit_ends = np.concatenate((separators, [len(buffer)]))
        # An empty text leaves an empty unit between two newlines.
        keep = unit_ends > unit_starts
    else:
        # A code point starts at every byte that is not a UTF-8 continuation byte (10xxxxxx).
        unit_starts = np.flatnonzero((raw & _UTF8_CONTINUATION_MASK) != _UTF8_CONTINUATION_BITS)
        unit_ends = np.concatenate((unit_starts[1:], [len(buffer)]))
        keep = raw[unit_starts] != _NEWLINE_BYTE
    unit_starts, unit_ends = unit_starts[keep], unit_ends[keep]
    # A unit's text is the number of newlines before it.
    unit_docs = np.searchsorted(newlines, unit_starts)
    units_per_doc = np.bincount(unit_docs, minlength=num_docs)
    first_unit = np.concatenate(([0], np.cumsum(units_per_doc)[:-1]))
    # Full n-grams: unit j starts one when unit j + ngram - 1 lies in the same text.
    last = np.arange(len(unit_starts)) + (ngram - 1)
    full = np.flatnonzero(last < len(unit_starts))
    full = full[unit_docs[last[full]] == unit_docs[full]]
    starts, ends, docs = unit_starts[full], unit_ends[full + ngram - 1], unit_docs[full]
    # Short texts: one shingle with all their units.
    short = np.flatnonzero((units_per_doc > 0) & (units_per_doc < ngram))
    if short.size:
        starts = np.concatenate((starts, unit_starts[first_unit[short]]))
        ends = np.concatenate((ends, unit_ends[first_unit[short] + units_per_doc[short] - 1]))
        docs = np.concatenate((docs, short))
        order = np.argsort(starts, kind="stable")
        starts, ends, docs = starts[order], ends[order], docs[order]
    counts = np.bincount(docs, minlength=num_docs)
    return buffer, starts.astype(np.int64), ends.astype(np.int64), counts.astype(np.int64)


def _cut(buffer: bytes, starts: np.ndarray, ends: np.ndarray) -> Iterable[bytes]:
    return map(buffer.__getitem__, map(slice, starts.tolist(), ends.tolist()))


def shingles(text: str, kind: str, ngram: int) -> list[bytes]:
    """The shingles of a text as bytes, in text order (repeats included): what to feed
    ``datasketch.MinHash.update_batch`` to reproduce our signature."""
    buffer, starts, ends, _ = batch_shingle_spans([text], kind, ngram)
    return list(_cut(buffer, starts, ends))


def hash_tokens(tokens: Iterable[bytes], token_hash: str = "sha1") -> np.ndarray:
    """32-bit token hashes, equal to datasketch's ``sha1_hash32`` (or ``xxhash.xxh32_intdigest``)."""
    if token_hash == "sha1":
        # Full 20-byte digests joined, then the first 4 bytes of each read as little-endian uint32: no
        # per-token slicing or struct call.
        digests = b"".join(map(methodcaller("digest"), map(hashlib.sha1, tokens)))
        return np.frombuffer(digests, dtype="<u4").reshape(-1, 5)[:, 0].astype(np.uint32)
    if token_hash == "xxh32":
        return np.fromiter(map(xxhash.xxh32_intdigest, tokens), dtype=np.uint32)
    raise ValueError(f"unknown token hash {token_hash!r}; expected one of {TOKEN_HASHES}")


def batch_shingle_hashes(texts: Sequence[str], kind: str, ngram: int,
                         token_hash: str = "sha1") -> tuple[np.ndarray, np.ndarray]:
    """(token hashes of all shingles of all texts, in order; number of shingles per text)."""
    buffer, starts, ends, counts = batch_shingle_spans(texts, kind, ngram)
    return hash_tokens(_cut(buffer, starts, ends), token_hash), counts


def shingle_hashes(text: str, kind: str, ngram: int, token_hash: str = "sha1") -> np.ndarray:
    """Token hashes of every shingle of one text (repeats included, text order)."""
    return batch_shingle_hashes([text], kind, ngram, token_hash)[0]


# ------------------------------------------------------------------------------------------- signatures

@functools.lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int, scheme: str = "affine32") -> tuple[np.ndarray, np.ndarray]:
    """datasketch's permutation parameters (a, b) for ``num_perm`` and ``seed``, drawn the same way."""
    generator = np.random.RandomState(seed)
    if scheme == "affine32":
        a = generator.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = generator.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    elif scheme == "legacy":
        # One (a, b) draw per permutation, interleaved, as datasketch < 2.0 did.
        drawn = np.array([(generator.randint(1, MERSENNE_PRIME_61, dtype=np.uint64),
                           generator.randint(0, MERSENNE_PRIME_61, dtype=np.uint64))
                          for _ in range(num_perm)], dtype=np.uint64)
        a, b = drawn[:, 0].copy(), drawn[:, 1].copy()
    else:
        raise ValueError(f"unknown permutation scheme {scheme!r}; expected one of {SCHEMES}")
    a.setflags(write=False)
    b.setflags(write=False)
    return a, b


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch's pre-mix for affine32); wrapping uint32 arithmetic."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


def _permuted(hashes: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: str) -> np.ndarray:
    """(num_perm, len(hashes)) permuted hash values, uint32 (permutations on rows: the per-document minimum
    then runs along contiguous memory)."""
    if scheme == "affine32":
        out = np.multiply(a[:, None], _fmix32(hashes)[None, :])
        out += b[:, None]
        return out
    # legacy: (a*h + b) wraps modulo 2^64 in datasketch's uint64 arithmetic, then % (2^61 - 1). Since
    # 2^61 = 1 (mod p), v % p = (v & p) + (v >> 61), minus p once if that reaches p: bit-identical to the
    # division, and ~3x faster than numpy's uint64 modulo. In-place steps keep the buffers few.
    wide = np.multiply(a[:, None], hashes.astype(np.uint64)[None, :])
    wide += b[:, None]
    folded = wide & MERSENNE_PRIME_61
    wide >>= np.uint64(61)
    folded += wide
    np.subtract(folded, MERSENNE_PRIME_61, out=folded, where=folded >= MERSENNE_PRIME_61)
    folded &= LOW_32_BITS
    return folded.astype(np.uint32)


def ragged_signatures(hashes: np.ndarray, counts: np.ndarray, num_perm: int = 128, seed: int = 1,
                      scheme: str = "affine32") -> np.ndarray:
    """MinHash signatures of many documents at once: (len(counts), num_perm) uint32.

    ``hashes`` holds the token hashes of all documents one after another, ``counts[i]`` how many belong to
    document i. A document without tokens gets datasketch's empty signature (all 2^32 - 1)."""
    a, b = permutations(num_perm, seed, scheme)
    counts = np.asarray(counts, dtype=np.int64)
    hashes = np.asarray(hashes, dtype=np.uint32)
    if counts.sum() != len(hashes):
        raise ValueError("counts must add up to the number of hashes")
    result = np.full((len(counts), num_perm), MAX_HASH_32, dtype=np.uint32)
    non_empty = np.flatnonzero(counts)
    if non_empty.size == 0:
        return result
    doc_starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[non_empty]
    total = len(hashes)
    # Chunks of shingles small enough that the (num_perm x chunk) block stays in cache.
    chunk = max(64, _PERMUTE_BLOCK_VALUES // num_perm)
    # Segments: cut at every document start and every chunk start, so each segment lies in one chunk and
    # one document; within a chunk, segments belong to distinct documents.
    cuts = np.union1d(doc_starts, np.arange(0, total, chunk))
    segment_docs = non_empty[np.searchsorted(doc_starts, cuts, side="right") - 1]
    for chunk_start in range(0, total, chunk):
        chunk_end = min(chunk_start + chunk, total)
        first, last = np.searchsorted(cuts, [chunk_start, chunk_end])
        permuted = _permuted(hashes[chunk_start:chunk_end], a, b, scheme)
        minima = np.minimum.reduceat(permuted, cuts[first:last] - chunk_start, axis=1)
        docs = segment_docs[first:last]
        result[docs] = np.minimum(result[docs], minima.T)
    return result


def signatures(hash_arrays: Sequence[np.ndarray], num_perm: int = 128, seed: int = 1,
               scheme: str = "affine32") -> np.ndarray:
    """Signatures of documents given as one array of token hashes each."""
    counts = np.fromiter((len(h) for h in hash_arrays), dtype=np.int64, count=len(hash_arrays))
    hashes = (np.concatenate([np.asarray(h, dtype=np.uint32) for h in hash_arrays]) if len(hash_arrays)
              else np.zeros(0, dtype=np.uint32))
    return ragged_signatures(hashes, counts, num_perm, seed, scheme)


def text_signatures(texts: Sequence[str], *, kind: str = "word", ngram: int = 5, num_perm: int = 128,
                    seed: int = 1, scheme: str = "affine32",
                    token_hash: str = "sha1") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signatures of a batch of texts, with all their token hashes and the count per text (for exact
    verification and the too-few-shingles rule)."""
    hashes, counts = batch_shingle_hashes(texts, kind, ngram, token_hash)
    return ragged_signatures(hashes, counts, num_perm, seed, scheme), hashes, counts


# --------------------------------------------------------------------------------------------------- LSH

@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, false_positive_weight: float = 0.1,
               false_negative_weight: float = 0.9) -> tuple[int, int]:
    """(bands, rows) from datasketch's optimizer: minimises the weighted integrals of false-positive and
    false-negative probability; weights towards recall by default (datasketch's own default is 0.5/0.5,
    which gives 9 x 13 at 0.8: a pair at Jaccard 0.8 becomes a candidate only ~40% of the time)."""
    from datasketch.lsh import _optimal_param

    bands, rows = _optimal_param(threshold, num_perm, false_positive_weight, false_negative_weight)
    return int(bands), int(rows)


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Probability that a pair at this Jaccard shares at least one band (the S-curve)."""
    return 1.0 - (1.0 - jaccard ** rows) ** bands


def band_hashes(signature: np.ndarray, bands: int, rows: int) -> list[bytes]:
    """One 8-byte digest per band of a signature (band i covers rows i*rows .. (i+1)*rows - 1)."""
    sig = np.ascontiguousarray(signature, dtype=np.uint32)
    return [xxhash.xxh3_64_digest(sig[band * rows:(band + 1) * rows].tobytes()) for band in range(bands)]


def bucket_edges(members: Iterable[str], all_pairs_max: int = 8) -> list[tuple[str, str]]:
    """Candidate edges of one LSH bucket, each (smaller id, larger id).

    A small bucket (at most ``all_pairs_max`` distinct members) links all its pairs: with verified edges,
    linking only to one representative loses members that are near-duplicates of the others but fall just
    below the threshold against the representative (two edited copies of one original, where the
    representative is one of the copies). A larger (hot) bucket links every member to its smallest id only:
    linear in its size, never all pairs."""
    ordered = sorted(set(members))
    if len(ordered) < 2:
        return []
    if len(ordered) <= all_pairs_max:
        return [(ordered[i], ordered[j]) for i in range(len(ordered)) for j in range(i + 1, len(ordered))]
    representative = ordered[0]
    return [(representative, member) for member in ordered[1:]]


# -------------------------------------------------------------------------------------------- similarity

def estimated_jaccard(signature_a: np.ndarray, signature_b: np.ndarray) -> float:
    """The MinHash estimate: the share of equal signature values (datasketch's ``MinHash.jaccard``)."""
    if len(signature_a) != len(signature_b) or len(signature_a) == 0:
        raise ValueError("signatures must have the same, non-zero length")
    return float(np.count_nonzero(signature_a == signature_b)) / float(len(signature_a))


def exact_jaccard(hashes_a: np.ndarray, hashes_b: np.ndarray) -> float:
    """Jaccard of two shingle sets given by their token hashes (duplicates ignored)."""
    set_a, set_b = np.unique(hashes_a), np.unique(hashes_b)
    if set_a.size == 0 and set_b.size == 0:
        return 1.0
    shared = np.intersect1d(set_a, set_b, assume_unique=True).size
    return shared / float(set_a.size + set_b.size - shared)


# ------------------------------------------------------------------------------------------- clustering

class UnionFind:
    """A mergeable union-find over hashable, ordered node ids. The root of a component is always its
    smallest id (union attaches the larger root under the smaller), so roots are deterministic cluster ids
    whatever the order of unions and merges."""

    __slots__ = ("parent",)

    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, node):
        parent = self.parent
        if node not in parent:
            parent[node] = node
            return node
        while parent[node] != node:
            # Path halving keeps trees shallow without recursion.
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def union(self, a, b) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return
        if root_b < root_a:
            root_a, root_b = root_b, root_a
        self.parent[root_b] = root_a

    def merge(self, other: "UnionFind") -> "UnionFind":
        for node, parent in other.parent.items():
            self.union(node, parent)
        return self

    def roots(self) -> dict:
        """node -> smallest id of its component, for every node seen."""
        return {node: self.find(node) for node in list(self.parent)}

    def __len__(self) -> int:
        return len(self.parent)


def components(edges: Iterable[tuple]) -> dict:
    """node -> smallest id of its connected component, for every node on an edge."""
    forest = UnionFind()
    for a, b in edges:
        forest.union(a, b)
    return forest.roots()


# Large-star / small-star (Kiveris et al., "Connected Components in MapReduce and Beyond", SoCC 2014): each
# operation sees one node and its neighbour list, so a round is one GroupByKey. Alternating them turns
# every component into a star around its smallest node in O(log^2 n) rounds (a few in practice).

def large_star(node, neighbors: Iterable) -> list[tuple]:
    """Connect every strictly larger neighbour of ``node`` to the smallest of node and its neighbours."""
    unique = set(neighbors)
    unique.discard(node)
    smallest = min(unique | {node})
    return [(neighbor, smallest) for neighbor in sorted(unique) if neighbor > node]


def small_star(node, neighbors: Iterable) -> list[tuple]:
    """Connect ``node`` and its smaller neighbours to the smallest of them."""
    smaller = {neighbor for neighbor in neighbors if neighbor < node}
    if not smaller:
        return []
    smallest = min(smaller)
    return [(member, smallest) for member in sorted(smaller | {node}) if member != smallest]


def star_label(node, neighbors: Iterable):
    """The provisional component label of a node after the star rounds: the smallest of it and its
    neighbours (the component's smallest id once the rounds have converged)."""
    return min(set(neighbors) | {node})


def contracted_edges(node, own_label, neighbor_labels: Iterable) -> list[tuple]:
    """Edges between labels that the star rounds left unmerged; none once they converged."""
    return [(own_label, label) for label in sorted(set(neighbor_labels)) if label != own_label]


def star_rounds_components(edges: Iterable[tuple], rounds: int) -> dict:
    """The distributed method run in one process (for tests): star rounds, contraction, union-find on what
    is left. Returns node -> smallest id of its component, like :func:`components`."""
    current = [tuple(edge) for edge in edges]

    def neighbor_lists(edge_list):
        adjacency: dict = {}
        for a, b in edge_list:
            if a == b:
                continue
            adjacency.setdefault(a, []).append(b)
            adjacency.setdefault(b, []).append(a)
        return adjacency

    for _ in range(rounds):
        current = [edge for node, nbrs in neighbor_lists(current).items() for edge in large_star(node, nbrs)]
        current = [edge for node, nbrs in neighbor_lists(current).items() for edge in small_star(node, nbrs)]
    adjacency = neighbor_lists(current)
    labels = {node: star_label(node, nbrs) for node, nbrs in adjacency.items()}
    remainder = [edge for node, nbrs in adjacency.items()
                 for edge in contracted_edges(node, labels[node], [labels[n] for n in nbrs])]
    finish = components(remainder)
    return {node: finish.get(label, label) for node, label in labels.items()}


# ------------------------------------------------------------------------------------------------ survivor

def survivor_rank(member_id: str, document_length: int, rule: str) -> tuple:
    """Sort key of a cluster member: the smallest survives."""
    if rule == "longest_document":
        return (-document_length, member_id)
    if rule == "smallest_id":
        return (member_id,)
    raise ValueError(f"unknown survivor rule {rule!r}")


def choose_survivor(members: Iterable[tuple[str, int]], rule: str) -> str:
    """The id that survives among (id, document length) members."""
    return min(members, key=lambda member: survivor_rank(member[0], member[1], rule))[0]


def size_histogram(sizes: Iterable[int]) -> dict[str, int]:
    histogram: dict[str, int] = {}
    for size in sizes:
        histogram[str(size)] = histogram.get(str(size), 0) + 1
    return dict(sorted(histogram.items(), key=lambda item: int(item[0])))
