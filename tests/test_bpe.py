"""Byte-level BPE: compared with Counter, str.replace and the Hugging Face tokenizers library."""

import json
import random
from collections import Counter

import pytest

from gptcourse import bpe

CORPUS_SAMPLE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\n"
    "Resolved. resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy "
    "to the people.\n"
) * 3 + "café naïve jalapeño 🙂🙂 日本語 aaaa aaaaa"


def _random_text(rng: random.Random, n: int) -> str:
    alphabet = "ab \n" + "éü" + "日本" + "🙂🚀" + "\u0301"
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_pair_counts_match_counter():
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(4) for _ in range(rng.randrange(0, 30))]
        assert bpe.get_pair_counts(ids) == dict(Counter(zip(ids, ids[1:])))


def test_merge_pair_matches_str_replace():
    # str.replace also works left to right without overlap: an independent reference.
    rng = random.Random(1)
    for _ in range(50):
        ids = [rng.randrange(3) for _ in range(rng.randrange(0, 20))]
        pair = (rng.randrange(3), rng.randrange(3))
        text = "".join("abc"[i] for i in ids)
        expected = text.replace("abc"[pair[0]] + "abc"[pair[1]], "X")
        got = "".join("X" if i == 9 else "abc"[i] for i in bpe.merge_pair(ids, pair, 9))
        assert got == expected


def test_merge_of_three_in_a_row_does_not_overlap():
    assert bpe.merge_pair([97, 97, 97], (97, 97), 256) == [256, 97]


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_of_any_utf8_text(seed):
    rng = random.Random(seed)
    merges = bpe.train_bpe(_random_text(rng, 300), 256 + 40)
    for _ in range(10):
        text = _random_text(rng, rng.randrange(0, 60))
        ids = bpe.encode(text, merges)
        assert bpe.decode(ids, merges) == text
        assert all(0 <= i < 256 + len(merges) for i in ids)


def test_merges_reduce_the_token_count_and_every_merge_is_a_most_frequent_pair():
    merges = bpe.train_bpe(CORPUS_SAMPLE, 256 + 30)
    ids = list(CORPUS_SAMPLE.encode("utf-8"))
    for i, pair in enumerate(merges):
        counts = bpe.get_pair_counts(ids)
        best = max(counts.values())
        assert counts[pair] == best
        assert pair == min(p for p, n in counts.items() if n == best)  # the stated tie-break
        ids = bpe.merge_pair(ids, pair, 256 + i)
    assert bpe.encode(CORPUS_SAMPLE, merges) == ids
    ratio = bpe.compression_ratio(CORPUS_SAMPLE, merges)
    assert ratio == len(CORPUS_SAMPLE.encode("utf-8")) / len(ids) and ratio > 1.5


def test_training_stops_when_no_pair_is_left():
    assert bpe.train_bpe("abab", 300) == [(97, 98), (256, 256)]
    assert bpe.train_bpe("", 260) == []


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="at least 256"):
        bpe.train_bpe("abc", 100)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bpe.decode([300], [])
    with pytest.raises(ValueError, match="does not exist yet"):
        bpe.token_bytes([(300, 1)])
    with pytest.raises(ValueError, match="non-empty"):
        bpe.compression_ratio("", [])


def _hugging_face_bpe(text: str, vocab_size: int):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([text], trainer)
    return tokenizer


def _byte_of_char() -> dict[str, int]:
    # The byte-level alphabet lists the 256 characters in code point order: rank -> byte.
    order = bpe.byte_level_order()
    by_rank = sorted(range(256), key=order.__getitem__)
    alphabet = sorted(__import__("tokenizers").pre_tokenizers.ByteLevel.alphabet())
    return {char: by_rank[rank] for rank, char in enumerate(alphabet)}


def test_byte_level_order_reproduces_hugging_face_merges_exactly():
    vocab_size = 256 + 60
    tokenizer = _hugging_face_bpe(CORPUS_SAMPLE, vocab_size)
    byte_of = _byte_of_char()
    theirs = [(bytes(byte_of[c] for c in a), bytes(byte_of[c] for c in b))
              for a, b in json.loads(tokenizer.to_str())["model"]["merges"]]

    merges = bpe.train_bpe(CORPUS_SAMPLE, vocab_size, tie_order=bpe.byte_level_order())
    vocab = bpe.token_bytes(merges)
    assert [(vocab[a], vocab[b]) for a, b in merges] == theirs

    ids = bpe.encode(CORPUS_SAMPLE, merges)
    assert [vocab[i] for i in ids] == [bytes(byte_of[c] for c in token)
                                       for token in tokenizer.encode(CORPUS_SAMPLE).tokens]
    assert tokenizer.decode(tokenizer.encode(CORPUS_SAMPLE).ids) == CORPUS_SAMPLE


def test_default_order_differs_from_hugging_face_only_in_ties():
    vocab_size = 256 + 60
    default = bpe.train_bpe(CORPUS_SAMPLE, vocab_size)
    ranked = bpe.train_bpe(CORPUS_SAMPLE, vocab_size, tie_order=bpe.byte_level_order())
    first = next((i for i, (a, b) in enumerate(zip(default, ranked)) if a != b), None)
    assert first is not None, "this sample is chosen to contain a tie"

    ids = list(CORPUS_SAMPLE.encode("utf-8"))
    for i in range(first):
        ids = bpe.merge_pair(ids, default[i], 256 + i)
    counts = bpe.get_pair_counts(ids)
    assert counts[default[first]] == counts[ranked[first]] == max(counts.values())
