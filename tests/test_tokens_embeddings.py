"""Tokenizer and embeddings against independent references."""

import math

import pytest
import torch

from gptcourse.embeddings import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    sinusoidal_encoding,
)
from gptcourse.tokens import CharTokenizer


def test_round_trip_and_eos():
    tok = CharTokenizer.from_text("hello world")
    ids = tok.encode("hold", add_eos=True)
    assert ids[-1] == tok.eos_id == tok.vocab_size - 1
    assert tok.decode(ids) == "hold"
    assert len(set(tok.encode("helo wrd"))) == len(set("hello world"))


def test_unknown_character_is_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'z'.*position 2"):
        tok.encode("abz")


def test_embedding_is_one_hot_times_matrix():
    emb = TokenEmbedding(10, 6)
    idx = torch.tensor([[1, 7, 7, 0]])
    one_hot = torch.nn.functional.one_hot(idx, 10).float()
    torch.testing.assert_close(emb(idx), one_hot @ emb.weight)


@pytest.mark.parametrize("d_model", [8, 7, 64])
def test_sinusoidal_matches_closed_form(d_model):
    pe = sinusoidal_encoding(50, d_model, dtype=torch.float64)
    for pos in (0, 1, 13, 49):
        for dim in range(d_model):
            pair = dim - dim % 2
            angle = pos / 10000 ** (pair / d_model)
            expected = math.sin(angle) if dim % 2 == 0 else math.cos(angle)
            assert pe[pos, dim].item() == pytest.approx(expected, abs=1e-12)


def test_position_modules_refuse_positions_past_the_table():
    for module in (SinusoidalPositionalEncoding(8, 4), LearnedPositionalEmbedding(8, 4)):
        assert module(3, start=5).shape == (3, 4)
        with pytest.raises(ValueError, match="context"):
            module(4, start=5)
