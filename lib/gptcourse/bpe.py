"""Byte-level byte-pair encoding (BPE): subword tokens learned from the bytes of a text.

Text is first turned into its UTF-8 bytes, so the starting vocabulary is the 256 possible
byte values and any string, in any script, with emoji and accents, can be encoded. Training
repeats one step: count every pair of neighbouring tokens, and replace the most frequent
pair everywhere by a new token whose id is the next free one (256, 257, ...). The list of
merges, in the order they were learned, is the whole tokenizer.

Rules, stated once (the checks and the notebook use the same):

* pairs are counted over every window of two neighbours, so ``"aaa"`` holds the pair
  ``(a, a)`` twice; the whole text is one sequence (no splitting into words first);
* a merge replaces occurrences from left to right without overlap: merging ``(a, a)`` in
  ``"aaa"`` gives ``[aa, a]``;
* among pairs with the same count, the smallest pair wins, comparing ``(left, right)`` as
  a tuple of token ranks. By default a token's rank is its id. ``tie_order`` lets the
  256 byte values be ranked differently, which is how a library that orders bytes by
  another rule is reproduced exactly (see :func:`byte_level_order`);
* training stops early when no pair is left;
* decoding joins the bytes of all tokens first and decodes UTF-8 once at the end, since a
  single token may hold only part of a multi-byte character.
"""

import logging
from collections.abc import Sequence

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

N_BYTES = 256


def get_pair_counts(ids: Sequence[int]) -> dict[tuple[int, int], int]:
    """Count each pair of neighbouring ids: ``[1, 2, 1, 2]`` -> ``{(1, 2): 2, (2, 1): 1}``."""
    counts: dict[tuple[int, int], int] = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, left to right.

    Occurrences do not overlap: merging ``(7, 7)`` in ``[7, 7, 7]`` gives ``[new_id, 7]``.
    """
    first, second = pair
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def byte_level_order() -> list[int]:
    """The rank of each byte value when bytes are ordered as byte-level BPE libraries do.

    GPT-2's byte-level tokenizer (and Hugging Face ``tokenizers``) shows every byte as a
    printable character: printable bytes stand for themselves, the others (space, newline,
    control bytes, ...) are moved to code points from 256 on. Vocabularies sort the 256
    characters by code point, so space (shown as ``Ġ``) ranks after every letter.
    Returns ``order`` with ``order[byte] = rank``.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    code_point = {}
    moved = 0
    for byte in range(N_BYTES):
        if byte in printable:
            code_point[byte] = byte
        else:
            code_point[byte] = N_BYTES + moved
            moved += 1
    by_code_point = sorted(range(N_BYTES), key=code_point.__getitem__)
    order = [0] * N_BYTES
    for rank, byte in enumerate(by_code_point):
        order[byte] = rank
    return order


def train_bpe(text: str, vocab_size: int, tie_order: Sequence[int] | None = None,
              progress: bool = False) -> list[tuple[int, int]]:
    """Learn ``vocab_size - 256`` merges from ``text``; returns them in the order learned.

    Merge ``i`` creates token id ``256 + i``. Ties between equally frequent pairs go to the
    smallest ``(rank(left), rank(right))``; ``tie_order[byte]`` ranks the byte values
    (default: the byte value itself) and merged tokens rank by their id.
    """
    if not isinstance(text, str):
        raise TypeError(f"train_bpe expects a str, got {type(text).__name__}")
    if vocab_size < N_BYTES:
        raise ValueError(f"vocab_size must be at least {N_BYTES} (one token per byte value), "
                         f"got {vocab_size}")
    if tie_order is not None and sorted(tie_order) != list(range(N_BYTES)):
        raise ValueError("tie_order must be a permutation of range(256)")

    def rank(token: int) -> int:
        return tie_order[token] if tie_order is not None and token < N_BYTES else token

    ids = list(text.encode("utf-8"))
    merges: list[tuple[int, int]] = []
    for i in tqdm(range(vocab_size - N_BYTES), desc="BPE merges", disable=not progress):
        counts = get_pair_counts(ids)
        if not counts:
            logger.info("no pair left after %d merges; stopping early", i)
            break

        # Highest count first, then the smallest pair by rank.
        pair = min(counts, key=lambda p: (-counts[p], rank(p[0]), rank(p[1])))
        ids = merge_pair(ids, pair, N_BYTES + i)
        merges.append(pair)
    return merges


def token_bytes(merges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The bytes each token id stands for: ids 0..255 are single bytes, then the merges."""
    vocab = [bytes([b]) for b in range(N_BYTES)]
    for i, (first, second) in enumerate(merges):
        if first >= N_BYTES + i or second >= N_BYTES + i:
            raise ValueError(f"merge {i} uses token {max(first, second)}, which does not "
                             "exist yet: merges must only use earlier tokens")
        vocab.append(vocab[first] + vocab[second])
    return vocab


def encode(text: str, merges: Sequence[tuple[int, int]]) -> list[int]:
    """Token ids of ``text``: its UTF-8 bytes with every merge applied in training order."""
    ids = list(text.encode("utf-8"))
    for i, pair in enumerate(merges):
        if len(ids) < 2:
            break
        ids = merge_pair(ids, tuple(pair), N_BYTES + i)
    return ids


def decode(ids: Sequence[int], merges: Sequence[tuple[int, int]]) -> str:
    """The text of token ids: join the bytes of every token, then decode UTF-8 once.

    Ids that do not form valid UTF-8 (possible for ids sampled from a model) become the
    replacement character; ids from :func:`encode` always round-trip exactly.
    """
    vocab = token_bytes(merges)
    for token in ids:
        if not 0 <= token < len(vocab):
            raise ValueError(f"token id {token} is outside the vocabulary of {len(vocab)} "
                             "tokens; decode with the merges the ids were encoded with")
    return b"".join(vocab[token] for token in ids).decode("utf-8", errors="replace")


def compression_ratio(text: str, merges: Sequence[tuple[int, int]]) -> float:
    """UTF-8 bytes of ``text`` per token: how many bytes one token stands for on average."""
    n_bytes = len(text.encode("utf-8"))
    if n_bytes == 0:
        raise ValueError("compression_ratio needs a non-empty text")
    return n_bytes / len(encode(text, merges))
