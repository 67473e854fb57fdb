"""Checks for the subword tokens chapter (12-bpe): byte-pair encoding on UTF-8 bytes."""

from gptcourse import bpe as ref
from gptcourse.checks import Case, Exercise, Mistake, compare_outputs, register

CHAPTER = "12-bpe"

# Texts chosen so that ties between equally frequent pairs happen, pairs overlap ("aaa"),
# and characters take 2, 3 and 4 bytes in UTF-8.
VISIBLE_TEXTS = [
    "aaabdaaabac",
    "the cat sat on the mat",
    "café, naïve, jalapeño 🙂🙂",
]
HIDDEN_TEXTS = [
    "aaaa bbbb aaaa cccc",
    "To be, or not to be, that is the question:",
    "Grüße aus Köln! ¿Qué tal? 日本語のテキスト 🚀🚀🌍",
    "ab ba ab ba ba ab zz zz zzz",
    "\n\nFirst Citizen:\nBefore we proceed any further, hear me speak.\n",
]


def _as_list(ids):
    return [int(i) for i in ids]


def _short(ids, around=0, width=12):
    """A list of ids for a message: whole when short, else a window around ``around``."""
    if len(ids) <= width:
        return str(list(ids))
    start = max(0, min(around - width // 2, len(ids) - width))
    inner = ", ".join(str(i) for i in ids[start:start + width])
    return (f"[{'..., ' if start else ''}{inner}"
            f"{', ...' if start + width < len(ids) else ''}] ({len(ids)} ids)")


def _compare_ids(expected, actual):
    """Token id lists, compared as tokens: where the first one differs, and both lists."""
    if not isinstance(actual, list) or not isinstance(expected, list):
        return compare_outputs(expected, actual)
    if actual == expected:
        return None
    i = next((i for i, (e, a) in enumerate(zip(expected, actual)) if e != a),
             min(len(expected), len(actual)))
    return (f"token ids differ from position {i} on: expected {_short(expected, i)}, got "
            f"{_short(actual, i)}")


# ---- get_pair_counts ---------------------------------------------------------------------

def _pair_count_cases(texts):
    return [Case(f"the bytes of {text!r}", (list(text.encode("utf-8")),)) for text in texts] + [
        Case("ids that are not bytes: [300, 7, 7, 7, 300, 7]", ([300, 7, 7, 7, 300, 7],))]


def _run_pair_counts(candidate, case):
    counts = candidate(*case.args)
    return sorted([int(a), int(b), int(n)] for (a, b), n in dict(counts).items())


def _compare_pair_counts(expected, actual):
    """Counts as [left, right, count] rows, compared pair by pair."""
    want = {(a, b): n for a, b, n in expected}
    got = {(a, b): n for a, b, n in actual}
    for pair in sorted(want):
        if pair not in got:
            times = "once" if want[pair] == 1 else f"{want[pair]} times"
            return f"pair {pair} occurs {times}, but your counts do not hold it"
        if got[pair] != want[pair]:
            return f"pair {pair}: expected count {want[pair]}, got {got[pair]}"
    extra = sorted(set(got) - set(want))
    if extra:
        return f"your counts hold the pair {extra[0]}, which is not two neighbours in ids"
    return None


def _pairs_step_two(ids):
    counts = {}
    for pair in zip(ids[::2], ids[1::2]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def _pairs_presence(ids):
    return {pair: 1 for pair in zip(ids, ids[1:])}


register(Exercise(
    id="get_pair_counts", chapter=CHAPTER, title="Exercise 1: count neighbouring pairs",
    reference=ref.get_pair_counts,
    visible=lambda: _pair_count_cases(VISIBLE_TEXTS[:2]),
    hidden=lambda: _pair_count_cases(HIDDEN_TEXTS),
    run=_run_pair_counts, compare=_compare_pair_counts,
    mistakes=(
        Mistake("pairs_step_two",
                "You count only the pairs that start at even positions (ids[0::2] with "
                "ids[1::2]): every window of two neighbours counts, zip(ids, ids[1:]).",
                _pairs_step_two),
        Mistake("pairs_presence",
                "Every pair gets count 1: add 1 each time a pair occurs instead of "
                "setting it.", _pairs_presence),
    ),
    forbidden=("gptcourse.bpe.get_pair_counts",),
))


# ---- merge_pair --------------------------------------------------------------------------

def _merge_cases(hidden):
    cases = [
        Case("[5, 6, 5, 6, 7] merging (5, 6)", ([5, 6, 5, 6, 7], [5, 6], 256)),
        Case("three in a row: [97, 97, 97, 98] merging (97, 97)",
             ([97, 97, 97, 98], [97, 97], 256)),
        Case("the pair at the very end: [1, 2, 3, 1, 2]", ([1, 2, 3, 1, 2], [1, 2], 300)),
    ]
    if hidden:
        cases += [
            Case("five in a row", ([7, 7, 7, 7, 7], [7, 7], 260)),
            Case("the pair is absent", ([1, 2, 3, 4], [4, 1], 261)),
            Case("a single id", ([42], [42, 42], 262)),
            Case("an empty list", ([], [1, 2], 263)),
            Case("alternating (1, 2) and (2, 1)", ([1, 2, 1, 2, 1, 2, 1], [2, 1], 264)),
        ]
    return cases


def _run_merge(candidate, case):
    ids, pair, new_id = case.args
    return _as_list(candidate(list(ids), tuple(pair), new_id))


def _merge_overlap(ids, pair, new_id):
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
        elif i > 0 and (ids[i - 1], ids[i]) == tuple(pair) and out[-1] == new_id:
            continue
        else:
            out.append(ids[i])
    return out


def _merge_drops_last(ids, pair, new_id):
    out = []
    i = 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return list(ids[:i]) + [new_id] + list(ids[i + 2:])
    return list(ids)


register(Exercise(
    id="merge_pair", chapter=CHAPTER, title="Exercise 2: merge one pair",
    reference=ref.merge_pair,
    visible=lambda: _merge_cases(False),
    hidden=lambda: _merge_cases(True),
    run=_run_merge, compare=_compare_ids,
    mistakes=(
        Mistake("merge_overlap",
                "Overlapping occurrences are merged twice ([a, a, a] gave two new tokens): "
                "after a match, skip both ids (i += 2) so occurrences never overlap.",
                _merge_overlap),
        Mistake("merge_drops_last",
                "The last id goes missing when it is not part of a match: after the loop, "
                "keep the id left at the end.", _merge_drops_last),
        Mistake("merge_first_only",
                "Only the first occurrence is merged: replace every occurrence, left to "
                "right.", _merge_first_only),
    ),
    forbidden=("gptcourse.bpe.merge_pair",),
))


# ---- train_bpe ---------------------------------------------------------------------------

def _train_cases(texts, extra):
    return [Case(f"{extra} merges on {text!r}", (text, 256 + extra)) for text in texts]


def _run_train(candidate, case):
    return [_as_list(pair) for pair in candidate(*case.args)]


def _compare_merges(expected, actual):
    """Merges compared one by one: merge i is the pair that token 256 + i replaces."""
    for i, (e, a) in enumerate(zip(expected, actual)):
        if list(e) != list(a):
            return (f"merge {i} (token {256 + i}): expected {tuple(e)}, got {tuple(a)}"
                    + ("; the merges before it agree" if i else ""))
    if len(actual) != len(expected):
        return (f"expected {len(expected)} merges, got {len(actual)} (the first "
                f"{min(len(expected), len(actual))} agree)")
    return None


def _train_with_key(text, vocab_size, choose):
    ids = list(text.encode("utf-8"))
    merges = []
    for i in range(vocab_size - 256):
        counts = ref.get_pair_counts(ids)
        if not counts:
            break
        pair = choose(counts)
        ids = ref.merge_pair(ids, pair, 256 + i)
        merges.append(pair)
    return merges


def _train_first_seen(text, vocab_size):
    return _train_with_key(text, vocab_size, lambda counts: max(counts, key=counts.get))


def _train_largest_pair(text, vocab_size):
    return _train_with_key(text, vocab_size,
                           lambda counts: max(counts, key=lambda p: (counts[p], p)))


def _train_vocab_as_merges(text, vocab_size):
    return ref.train_bpe(text, vocab_size + 256)


register(Exercise(
    id="train_bpe", chapter=CHAPTER, title="Exercise 3: train BPE on bytes",
    reference=ref.train_bpe,
    visible=lambda: _train_cases(VISIBLE_TEXTS, 8),
    hidden=lambda: _train_cases(HIDDEN_TEXTS, 12) + _train_cases(["abcabcabd"], 30),
    run=_run_train, compare=_compare_merges,
    mistakes=(
        Mistake("tie_first_seen",
                "Ties are broken by which pair occurs first in the text (max over the "
                "dict): among equally frequent pairs take the smallest (left, right) pair.",
                _train_first_seen),
        Mistake("tie_largest",
                "Ties go to the largest pair: among equally frequent pairs take the "
                "smallest (left, right), e.g. min over (-count, pair).", _train_largest_pair),
        Mistake("vocab_as_merges",
                "You learn vocab_size merges, but the vocabulary already holds 256 byte "
                "tokens: learn vocab_size - 256 merges.", _train_vocab_as_merges),
    ),
    forbidden=("gptcourse.bpe.train_bpe",),
))


# ---- encode ------------------------------------------------------------------------------

def _coded_cases(texts, n_merges, train_text=None):
    cases = []
    for text in texts:
        merges = ref.train_bpe(train_text or text, 256 + n_merges)
        cases.append(Case(f"{text!r} with {len(merges)} merges",
                          (text, [list(pair) for pair in merges])))
    return cases


TRAIN_TEXT = ("the theme of the thesis: there, then, these. aaaa aaaa "
              "café café 🙂🙂🙂 naïve naïve")


# Merges given by hand, and a text in which a later merge's pair is the most frequent: only
# the merges' own order (first learned, first applied) gives the right tokens.
_ORDER_CASES = {
    False: [("abcbc", [(97, 98), (98, 99)])],
    True: [("xyzyzyz", [(120, 121), (121, 122)]),
           ("abcbcbcab", [(97, 98), (98, 99), (256, 99)])],
}


def _order_cases(hidden):
    return [Case(f"{text!r} with the merges {merges}, learned on another text",
                 (text, [list(pair) for pair in merges])) for text, merges in _ORDER_CASES[hidden]]


def _encode_cases(hidden):
    if not hidden:
        return (_coded_cases(VISIBLE_TEXTS, 10)
                + _coded_cases(["the other theme", "🙂 café"], 12, TRAIN_TEXT)
                + _order_cases(False))
    return (_coded_cases(HIDDEN_TEXTS, 15)
            + _coded_cases(["then the cafés", "🙂 new text ü", ""], 25, TRAIN_TEXT)
            + _order_cases(True))


def _run_encode(candidate, case):
    text, merges = case.args
    return _as_list(candidate(text, [tuple(pair) for pair in merges]))


def _encode_ids_from_zero(text, merges):
    ids = list(text.encode("utf-8"))
    for i, pair in enumerate(merges):
        ids = ref.merge_pair(ids, tuple(pair), i)
    return ids


def _encode_stop_early(text, merges):
    ids = list(text.encode("utf-8"))
    for i, pair in enumerate(merges):
        if tuple(pair) not in ref.get_pair_counts(ids):
            break
        ids = ref.merge_pair(ids, tuple(pair), 256 + i)
    return ids


def _encode_reversed(text, merges):
    ids = list(text.encode("utf-8"))
    for i in reversed(range(len(merges))):
        ids = ref.merge_pair(ids, tuple(merges[i]), 256 + i)
    return ids


def _encode_most_frequent_first(text, merges):
    """Applies the known pair that is most frequent in this text first, as in training."""
    ids = list(text.encode("utf-8"))
    rank = {tuple(pair): i for i, pair in enumerate(merges)}
    while True:
        counts = {p: n for p, n in ref.get_pair_counts(ids).items() if p in rank}
        if not counts:
            return ids
        pair = max(counts, key=counts.get)
        ids = ref.merge_pair(ids, pair, 256 + rank[pair])


register(Exercise(
    id="encode", chapter=CHAPTER, title="Exercise 4: encode text",
    reference=ref.encode,
    visible=lambda: _encode_cases(False),
    hidden=lambda: _encode_cases(True),
    run=_run_encode, compare=_compare_ids,
    mistakes=(
        Mistake("ids_from_zero",
                "Merge i must create token 256 + i: ids 0..255 are already taken by the "
                "byte values.", _encode_ids_from_zero),
        Mistake("stop_at_absent_merge",
                "You stop at the first merge whose pair is absent: a later merge may still "
                "apply, so skip it and go on.", _encode_stop_early),
        Mistake("merges_reversed",
                "Merges are applied in the wrong order: apply them in the order they were "
                "learned, the first merge first.", _encode_reversed),
        Mistake("most_frequent_first",
                "You apply the known pair that is most frequent in this text first. Encoding "
                "does not count again: it applies the merges in the order they were learned "
                "(merge 0 first), whatever is frequent in the new text.",
                _encode_most_frequent_first),
    ),
    forbidden=("gptcourse.bpe.encode",),
))


# ---- decode ------------------------------------------------------------------------------

_DECODE_ERROR = "<UnicodeDecodeError raised>"


# Ids whose bytes are not valid UTF-8, as a model may sample them: a stray 0xFF, a character
# cut short (the first byte of 'é', three of the four bytes of an emoji), a lone
# continuation byte. errors="replace" shows each broken piece as '\ufffd'.
_INVALID_UTF8 = {
    False: [("a stray byte 0xFF", [104, 105, 0xFF, 33], []),
            ("'é' cut after its first byte", [256, 0xC3, 32, 0xA9], [(99, 97)])],
    True: [("three of the four bytes of an emoji", [0xF0, 0x9F, 0x99, 120], []),
           ("a lone continuation byte 0x80", [256, 0x80, 256], [(111, 107)])],
}


def _decode_cases(hidden):
    encoded = []
    for case in _encode_cases(hidden):
        text, merges = case.args
        ids = ref.encode(text, [tuple(p) for p in merges])
        encoded.append(Case(f"the ids of {text!r} ({len(merges)} merges)", (ids, merges)))
    for label, ids, merges in _INVALID_UTF8[hidden]:
        encoded.append(Case(f"ids that are not valid UTF-8: {label}",
                            (ids, [list(pair) for pair in merges])))
    return encoded


def _compare_decoded(expected, actual):
    if actual == _DECODE_ERROR and expected != _DECODE_ERROR:
        return f"your decode raised UnicodeDecodeError; expected {expected!r}"
    return compare_outputs(expected, actual)


def _run_decode(candidate, case):
    ids, merges = case.args
    try:
        return candidate(list(ids), [tuple(pair) for pair in merges])
    except UnicodeDecodeError:
        # Turned into a value so that the per-token decoding mistake can be named.
        return _DECODE_ERROR


def _decode_per_token_strict(ids, merges):
    vocab = ref.token_bytes(merges)
    return "".join(vocab[i].decode("utf-8") for i in ids)


def _decode_per_token_replace(ids, merges):
    vocab = ref.token_bytes(merges)
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)


def _decode_strict(ids, merges):
    vocab = ref.token_bytes(merges)
    return b"".join(vocab[i] for i in ids).decode("utf-8")


def _decode_ignore(ids, merges):
    vocab = ref.token_bytes(merges)
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore")


def _decode_latin1(ids, merges):
    vocab = ref.token_bytes(merges)
    return b"".join(vocab[i] for i in ids).decode("latin-1")


register(Exercise(
    id="decode", chapter=CHAPTER, title="Exercise 5: decode ids, round-trip any text",
    reference=ref.decode,
    visible=lambda: _decode_cases(False),
    hidden=lambda: _decode_cases(True),
    run=_run_decode, compare=_compare_decoded,
    mistakes=(
        Mistake("decode_per_token_strict",
                "Each token is decoded on its own, so a character whose UTF-8 bytes are split "
                "across tokens raises UnicodeDecodeError: join the bytes of all tokens "
                "first, then decode once.", _decode_per_token_strict),
        Mistake("decode_per_token_replace",
                "Each token is decoded on its own, so characters split across tokens turn "
                "into '\ufffd': join the bytes of all tokens first, then decode once.",
                _decode_per_token_replace),
        Mistake("decode_strict",
                "You decode with .decode('utf-8') alone, which raises UnicodeDecodeError when "
                "the ids do not form valid UTF-8 (ids sampled from a model may not): decode "
                "with errors='replace'.", _decode_strict),
        Mistake("decode_ignore",
                "With errors='ignore' the bytes that are not valid UTF-8 vanish without a "
                "trace: use errors='replace', which shows each of them as '\ufffd'.",
                _decode_ignore),
        Mistake("decode_latin1",
                "The bytes are decoded as Latin-1, which garbles accents and emoji: decode "
                "them as UTF-8.", _decode_latin1),
    ),
    forbidden=("gptcourse.bpe.decode",),
))


# ---- compression_ratio -------------------------------------------------------------------

def _ratio_cases(hidden):
    cases = _encode_cases(hidden)
    return [c for c in cases if c.args[0]]  # the ratio of an empty text is undefined


def _ratio_chars(text, merges):
    return len(text) / len(ref.encode(text, merges))


def _ratio_inverted(text, merges):
    return len(ref.encode(text, merges)) / len(text.encode("utf-8"))


register(Exercise(
    id="compression_ratio", chapter=CHAPTER, title="Exercise 6: compression ratio",
    reference=ref.compression_ratio,
    visible=lambda: _ratio_cases(False),
    hidden=lambda: _ratio_cases(True),
    run=lambda candidate, case: float(candidate(case.args[0],
                                                [tuple(p) for p in case.args[1]])),
    mistakes=(
        Mistake("ratio_chars",
                "You count characters, not bytes: use len(text.encode('utf-8')), since "
                "accents and emoji take several bytes each.", _ratio_chars),
        Mistake("ratio_inverted",
                "The ratio is upside down: bytes per token is len(bytes) / len(tokens).",
                _ratio_inverted),
    ),
    forbidden=("gptcourse.bpe.compression_ratio",),
))
