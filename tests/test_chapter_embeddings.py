"""Chapters 01 and 02: the exercise references against independent computations, and the
feedback that names each classic mistake."""

import math

import pytest
import torch
import torch.nn.functional as F

from gptcourse.checks import CheckFailed, all_exercises, check, evaluate, run_cases
from gptcourse.checks import positional_encoding as pos_checks
from gptcourse.checks import tokens_and_embeddings as emb_checks
from gptcourse.embeddings import sinusoidal_encoding

CHAPTERS = ("01-tokens-and-embeddings", "02-positional-encoding")
EXERCISES = {i: ex for i, ex in all_exercises().items() if ex.chapter in CHAPTERS}


def test_chapters_register_their_exercises():
    assert set(EXERCISES) == {"one_hot_embed", "cosine_similarity", "nearest_neighbours",
                              "analogy", "equivariance_pair", "sinusoidal_encoding",
                              "embed_with_positions"}


def test_one_hot_embed_equals_embedding_lookup():
    weight = torch.randn(9, 5, generator=torch.Generator().manual_seed(0))
    idx = torch.tensor([8, 0, 3, 3])
    torch.testing.assert_close(emb_checks.one_hot_embed(idx, weight), F.embedding(idx, weight))


def test_cosine_similarity_matches_torch():
    g = torch.Generator().manual_seed(1)
    query, table = torch.randn(2, 1, 6, generator=g), torch.randn(4, 6, generator=g) * 3
    torch.testing.assert_close(emb_checks.cosine_similarity(query, table),
                               F.cosine_similarity(query, table, dim=-1))


def _brute_force_nearest(query, table, k, exclude):
    scored = [(F.cosine_similarity(query, row, dim=0).item(), i)
              for i, row in enumerate(table) if i not in exclude]
    return [i for _, i in sorted(scored, reverse=True)[:k]]


@pytest.mark.parametrize("exclude", [(), (3,), (0, 5, 9)])
def test_nearest_neighbours_matches_brute_force(exclude):
    g = torch.Generator().manual_seed(2)
    table = torch.randn(12, 4, generator=g) * torch.linspace(0.2, 5.0, 12)[:, None]
    query = table[3] + 0.3 * torch.randn(4, generator=g)
    got = emb_checks.nearest_neighbours(query, table, 4, exclude=exclude)
    assert got.dtype == torch.int64
    assert got.tolist() == _brute_force_nearest(query, table, 4, exclude)


def test_analogy_on_a_feature_table():
    # royal, male, female, adult
    words = ["king", "queen", "man", "woman", "prince", "princess"]
    table = torch.tensor([[1.0, 1, 0, 1], [1, 0, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1],
                          [1, 1, 0, 0], [1, 0, 1, 0]])
    index = words.index
    assert words[emb_checks.analogy(table, index("man"), index("king"), index("woman"))[0]] \
        == "queen"
    assert words[emb_checks.analogy(table, index("king"), index("prince"), index("queen"))[0]] \
        == "princess"


def test_equivariance_pair_agrees_only_without_positions():
    g = torch.Generator().manual_seed(3)
    w = [torch.randn(6, 6, generator=g) for _ in range(3)]
    x, perm = torch.randn(2, 5, 6, generator=g), torch.tensor([4, 0, 3, 1, 2])
    plain = pos_checks._make_attend(*w)
    with_positions = pos_checks._make_attend(*w, pe=sinusoidal_encoding(5, 6))
    first, after = pos_checks.equivariance_pair(plain, x, perm)
    torch.testing.assert_close(first, after)
    first, after = pos_checks.equivariance_pair(with_positions, x, perm)
    assert not torch.allclose(first, after, atol=1e-3)


def test_embed_with_positions_matches_per_position_sum():
    g = torch.Generator().manual_seed(4)
    idx = torch.randint(0, 7, (3, 5), generator=g)
    token_weight, pe = torch.randn(7, 4, generator=g), torch.randn(9, 4, generator=g)
    expected = torch.stack([torch.stack([token_weight[idx[b, t]] + pe[t] for t in range(5)])
                            for b in range(3)])
    torch.testing.assert_close(pos_checks.embed_with_positions(idx, token_weight, pe), expected)


def _float32_sinusoids(context_length, d_model, base=10000.0):
    """A typical learner's answer: exp/log frequencies, everything in float32."""
    position = torch.arange(context_length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(base) / d_model))
    pe = torch.zeros(context_length, d_model)
    pe[:, 0::2] = torch.sin(position * frequency)
    pe[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return pe


@pytest.mark.parametrize("hidden", [False, True])
def test_float32_sinusoids_pass_within_tolerance(hidden):
    exercise = EXERCISES["sinusoidal_encoding"]
    cases = exercise.cases(hidden)
    verdict = evaluate(exercise, cases, run_cases(exercise, _float32_sinusoids, cases))
    assert verdict.passed, verdict.message


def _learner(function):
    """``function`` as if defined in a notebook, so that the check accepts it."""
    function.__module__ = "__main__"
    return function


def _float32_multiplied(context_length, d_model, base=10000.0):
    """A learner's float32 answer that multiplies by base**(2i/d_model) instead of dividing."""
    position = torch.arange(context_length, dtype=torch.float32)[:, None]
    angle = position * base ** (torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    pe = torch.zeros(context_length, d_model)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe


def _float32_multiplied_exp(context_length, d_model, base=10000.0):
    """The same mistake in the exp/log form."""
    position = torch.arange(context_length, dtype=torch.float32)[:, None]
    angle = position * torch.exp(torch.arange(0, d_model, 2).float() * math.log(base) / d_model)
    pe = torch.zeros(context_length, d_model)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe


@pytest.mark.parametrize("answer", [_float32_multiplied, _float32_multiplied_exp])
def test_a_float32_answer_with_a_known_mistake_is_named(answer):
    # The variant is computed in float64; at large angles rounding alone separates the two.
    for hidden in (False, True):
        with pytest.raises(CheckFailed, match="instead of dividing"):
            check("sinusoidal_encoding", _learner(answer), hidden=hidden)


def test_visible_cases_try_every_argument_the_exercises_name():
    reference = sinusoidal_encoding  # held by the answer itself, so it is judged on its values

    def ignores_base(context_length, d_model, base=10000.0):
        return reference(context_length, d_model)

    def without_num_classes(idx, weight):
        return F.one_hot(idx).to(weight.dtype) @ weight

    def float32_one_hot(idx, weight):
        return F.one_hot(idx, num_classes=weight.shape[0]).float() @ weight

    def exclude_as_index(query, table, k, exclude=()):
        scores = emb_checks.cosine_similarity(query, table).clone()
        scores[exclude] = float("-inf")  # a tuple of several ids indexes several dimensions
        return scores.topk(k).indices

    wrong = [("sinusoidal_encoding", ignores_base, "ignores the base argument"),
             ("one_hot_embed", without_num_classes, "never use the last id"),
             ("one_hot_embed", float32_one_hot, "float64 weights"),
             ("nearest_neighbours", exclude_as_index, "exclude=")]
    for exercise_id, answer, message in wrong:
        with pytest.raises(CheckFailed, match=message):
            check(exercise_id, _learner(answer))


def test_indices_of_another_integer_dtype_are_refused_with_the_reason():
    reference = emb_checks.nearest_neighbours

    def nearest_int32(query, table, k, exclude=()):
        return reference(query, table, k, exclude).int()

    with pytest.raises(CheckFailed, match="expected torch.int64 row indices, got torch.int32"):
        check("nearest_neighbours", _learner(nearest_int32))


@pytest.mark.parametrize("exercise_id", sorted(EXERCISES))
def test_each_mistake_is_recognised_as_itself(exercise_id):
    # Stricter than naming a mistake: no variant may be mistaken for an earlier one.
    exercise = EXERCISES[exercise_id]
    for hidden in (False, True):
        cases = exercise.cases(hidden)
        for mistake in exercise.mistakes:
            verdict = evaluate(exercise, cases, run_cases(exercise, mistake.variant, cases))
            assert not verdict.passed
            assert verdict.mistake == mistake.name, (mistake.name, verdict.message)


@pytest.mark.filterwarnings("ignore:The use of `x.T`")
def test_learner_style_mistakes_of_chapter_01_fail_on_the_visible_cases():
    def cosine_by_matmul(a, b):
        return (a @ b.T) / (a.norm(dim=-1) * b.norm(dim=-1))

    def excluded_scored_0(query, table, k, exclude=()):
        scores = emb_checks.cosine_similarity(query, table).clone()
        scores[list(exclude)] = 0.0
        return scores.topk(k).indices

    def analogy_of_unit_vectors(table, a, b, c, k=1):
        unit = F.normalize(table, dim=-1)
        return emb_checks.nearest_neighbours(unit[b] - unit[a] + unit[c], table, k,
                                             exclude=(a, b, c))

    for exercise_id, answer, message in [
            ("cosine_similarity", cosine_by_matmul, "matrix product"),
            ("nearest_neighbours", excluded_scored_0, "similarity of 0"),
            ("analogy", analogy_of_unit_vectors, "normalised the vectors")]:
        with pytest.raises(CheckFailed, match=message):
            check(exercise_id, _learner(answer))
