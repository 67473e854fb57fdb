"""Checks for chapter 01, tokens and input embeddings.

The exercises: an embedding lookup written as a one-hot vector times the embedding matrix,
cosine similarity, nearest-neighbour search and word analogies by vector arithmetic. The
references live here because the library itself only needs the lookup (``weight[idx]``).
"""

import torch
import torch.nn.functional as F

from gptcourse.checks import Case, Exercise, Mistake, compare_outputs, register

CHAPTER = "01-tokens-and-embeddings"


# -- references -------------------------------------------------------------------------

def one_hot_embed(idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """idx (T,) int64, weight (V, d_model) -> (T, d_model): one-hot rows times ``weight``."""
    one_hot = F.one_hot(idx, num_classes=weight.shape[0]).to(weight.dtype)  # (T, V)
    return one_hot @ weight                                                 # (T, d_model)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (..., d), b (..., d), broadcastable -> (...): cosine of the angle along the last dim."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def _masked_similarities(query, table, exclude, score=cosine_similarity, fill=float("-inf")):
    scores = score(query, table).clone()  # (N,)
    for i in exclude:
        scores[i] = fill  # -inf: an excluded row can never be picked
    return scores


def nearest_neighbours(query: torch.Tensor, table: torch.Tensor, k: int,
                       exclude=()) -> torch.Tensor:
    """query (d,), table (N, d) -> (k,) int64: rows most similar to ``query``, best first,
    never one of the row indices in ``exclude``."""
    return _masked_similarities(query, table, exclude).topk(k).indices


def analogy(table: torch.Tensor, a: int, b: int, c: int, k: int = 1) -> torch.Tensor:
    """"a is to b as c is to ?": table (N, d) -> (k,) int64, the rows nearest to
    ``table[b] - table[a] + table[c]``, other than a, b and c."""
    target = table[b] - table[a] + table[c]  # (d,)
    return nearest_neighbours(target, table, k, exclude=(a, b, c))


# -- one-hot lookup ---------------------------------------------------------------------

def _random_weight(g, vocab_size, d_model, dtype=torch.float32):
    return torch.randn(vocab_size, d_model, generator=g, dtype=dtype)


def _one_hot_visible():
    g = torch.Generator().manual_seed(101)
    return [
        Case("5 token ids, vocab_size=7, d_model=4",
             (torch.tensor([3, 0, 6, 3, 1]), _random_weight(g, 7, 4))),
        Case("a single token id, vocab_size=10, d_model=3",
             (torch.tensor([9]), _random_weight(g, 10, 3))),
        Case("6 token ids that never use the last id, vocab_size=9, d_model=3",
             (torch.tensor([2, 0, 7, 7, 5, 1]), _random_weight(g, 9, 3))),
        Case("float64 weights, vocab_size=6, d_model=4",
             (torch.tensor([5, 1, 0, 3]), _random_weight(g, 6, 4, torch.float64))),
    ]


def _one_hot_hidden():
    g = torch.Generator().manual_seed(102)
    return [
        Case("8 token ids that never use the last id, vocab_size=12, d_model=5",
             (torch.tensor([0, 4, 4, 2, 10, 7, 1, 5]), _random_weight(g, 12, 5))),
        Case("float64 weights, vocab_size=65, d_model=16",
             (torch.randint(0, 65, (20,), generator=g),
              _random_weight(g, 65, 16, torch.float64))),
    ]


def _one_hot_transposed(idx, weight):
    one_hot = F.one_hot(idx, num_classes=weight.shape[0]).to(weight.dtype)
    return weight.T @ one_hot.T  # (d_model, T)


def _one_hot_summed_wrong_dim(idx, weight):
    one_hot = F.one_hot(idx, num_classes=weight.shape[0]).to(weight.dtype)
    return (one_hot[..., None] * weight).sum(-1)  # (T, V)


def _one_hot_only(idx, weight):
    return F.one_hot(idx, num_classes=weight.shape[0]).to(weight.dtype)


register(Exercise(
    id="one_hot_embed",
    chapter=CHAPTER,
    title="Exercise 1: an embedding lookup as a matrix product",
    reference=one_hot_embed,
    visible=_one_hot_visible,
    hidden=_one_hot_hidden,
    mistakes=(
        Mistake("transposed",
                "Your result is the transpose of the embeddings: you computed "
                "weight.T @ one_hot.T, which has shape (d_model, T). Put the one-hot rows "
                "first: one_hot @ weight gives one row per token.",
                _one_hot_transposed),
        Mistake("summed over the wrong dimension",
                "You summed one_hot[..., None] * weight over the last dimension (d_model), "
                "so you get one number per vocabulary entry. Sum over the vocabulary "
                "dimension instead, or use the matrix product one_hot @ weight.",
                _one_hot_summed_wrong_dim),
        Mistake("one-hot only",
                "You returned the one-hot vectors themselves, shape (T, vocab_size). "
                "Multiply them by the embedding matrix: one_hot @ weight.",
                _one_hot_only),
    ),
    forbidden=("gptcourse.checks.tokens_and_embeddings.one_hot_embed",),
))


# -- cosine similarity ------------------------------------------------------------------

def _vectors(g, *shape, dtype=torch.float32, scale=1.0):
    # Offsets and scales keep norms far from 1 and different from each other, so that a
    # missing or one-sided normalisation always shows.
    return (torch.randn(*shape, generator=g, dtype=dtype) + 0.5) * scale


def _cosine_visible():
    g = torch.Generator().manual_seed(201)
    return [
        Case("two vectors of length 4", (_vectors(g, 4, scale=3.0), _vectors(g, 4, scale=0.5))),
        Case("one query (5,) against a table of 6 rows (6, 5)",
             (_vectors(g, 5, scale=2.0), _vectors(g, 6, 5) * torch.arange(1.0, 7.0)[:, None])),
        Case("float64, two vectors of length 3",
             (_vectors(g, 3, dtype=torch.float64, scale=2.0),
              _vectors(g, 3, dtype=torch.float64, scale=0.5))),
        Case("pairs of rows, (2, 5) with (2, 5): row i of a with row i of b",
             (_vectors(g, 2, 5, scale=2.0), _vectors(g, 2, 5) * torch.tensor([[1.0], [3.0]]))),
    ]


def _cosine_hidden():
    g = torch.Generator().manual_seed(202)
    return [
        Case("pairs of rows, (3, 8) with (3, 8)",
             (_vectors(g, 3, 8, scale=4.0), _vectors(g, 3, 8, scale=0.25))),
        Case("float64, a batch of queries (2, 1, 6) against rows (4, 6)",
             (_vectors(g, 2, 1, 6, dtype=torch.float64, scale=2.0),
              _vectors(g, 4, 6, dtype=torch.float64) * torch.arange(1.0, 5.0,
                                                                   dtype=torch.float64)[:, None])),
    ]


def _cosine_dot(a, b):
    return (a * b).sum(-1)


def _cosine_only_a(a, b):
    return (a * b).sum(-1) / a.norm(dim=-1)


def _cosine_only_b(a, b):
    return (a * b).sum(-1) / b.norm(dim=-1)


def _cosine_squared_norms(a, b):
    return (a * b).sum(-1) / ((a * a).sum(-1) * (b * b).sum(-1))


def _cosine_whole_tensor_norm(a, b):
    return (a * b).sum(-1) / (a.norm() * b.norm())


def _cosine_matmul(a, b):
    # a @ b.T, as written for a query against a table (b.T is b itself for a vector).
    return (a @ (b.mT if b.dim() > 1 else b)) / (a.norm(dim=-1) * b.norm(dim=-1))


def _cosine_distance(a, b):
    return 1 - cosine_similarity(a, b)


register(Exercise(
    id="cosine_similarity",
    chapter=CHAPTER,
    title="Exercise 2: cosine similarity",
    reference=cosine_similarity,
    visible=_cosine_visible,
    hidden=_cosine_hidden,
    mistakes=(
        Mistake("plain dot product",
                "You returned the plain dot product a . b: it grows with the lengths of the "
                "vectors. Divide it by the product of the two lengths, |a| * |b|.",
                _cosine_dot),
        Mistake("only a normalised",
                "You divided the dot product by the length of a only. Cosine similarity "
                "divides by both lengths: (a . b) / (|a| * |b|).",
                _cosine_only_a),
        Mistake("only b normalised",
                "You divided the dot product by the length of b only. Cosine similarity "
                "divides by both lengths: (a . b) / (|a| * |b|).",
                _cosine_only_b),
        Mistake("squared lengths",
                "You divided by the squared lengths (a . a) * (b . b). The length is the "
                "square root of that sum: use torch.sqrt or .norm(dim=-1).",
                _cosine_squared_norms),
        Mistake("norm of the whole tensor",
                "You divided by the norm of the whole tensor (.norm() with no dim), which "
                "mixes every row together. Take the length of each vector: .norm(dim=-1).",
                _cosine_whole_tensor_norm),
        Mistake("matrix product",
                "You used a matrix product (a @ b.T), which pairs every vector of a with "
                "every vector of b: for two (N, d) inputs it gives (N, N) instead of N "
                "similarities. Multiply along the last dimension and sum, (a * b).sum(-1), "
                "which broadcasts like the inputs.",
                _cosine_matmul),
        Mistake("cosine distance",
                "You returned 1 - cosine similarity, the cosine *distance* (what "
                "scipy.spatial.distance.cosine computes). Return the similarity itself: "
                "1 for vectors pointing the same way.",
                _cosine_distance),
    ),
    forbidden=("gptcourse.checks.tokens_and_embeddings.cosine_similarity",),
))


# -- nearest neighbours -----------------------------------------------------------------

def _table(g, n, d, dtype=torch.float32):
    # Rows of very different lengths: ranking by dot product or by distance then differs
    # from ranking by angle.
    lengths = torch.linspace(0.3, 4.0, n, dtype=dtype)[torch.randperm(n, generator=g)]
    return torch.randn(n, d, generator=g, dtype=dtype) * lengths[:, None]


def _compare_indices(expected, actual):
    """Row indices must be int64, as torch.topk and argsort return them."""
    if (isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor)
            and actual.dtype != expected.dtype):
        return (f"dtype: expected {expected.dtype} row indices, got {actual.dtype}: return "
                "the indices as torch.topk or argsort give them, without converting them "
                "(no .int() or .float())")
    return compare_outputs(expected, actual)


def _pointing_away(table, rows):
    """A query opposite to the given rows: several similarities are negative, so an
    excluded row scored 0 would beat them."""
    return -sum(table[i] / table[i].norm() for i in rows)


def _nearest_visible():
    g = torch.Generator().manual_seed(301)
    table = _table(g, 10, 4)
    other = _table(g, 12, 6)
    away = _table(torch.Generator().manual_seed(311), 8, 4)
    return [
        Case("a query that is row 2 of a (10, 4) table, k=3, exclude=(2, 6)",
             (table[2].clone(), table, 3), {"exclude": (2, 6)}),
        Case("a query outside a (12, 6) table, k=4, nothing excluded",
             (torch.randn(6, generator=g) * 2.0, other, 4)),
        Case("a query opposite rows 0 and 1 of an (8, 4) table, so that some similarities "
             "are negative, k=5, exclude=(1, 4)",
             (_pointing_away(away, (0, 1)), away, 5), {"exclude": (1, 4)}),
    ]


def _nearest_hidden():
    g = torch.Generator().manual_seed(302)
    table = _table(g, 15, 5)
    wide = _table(g, 20, 8, torch.float64)
    away = _table(torch.Generator().manual_seed(312), 9, 5, torch.float64)
    return [
        Case("a query near row 7 of a (15, 5) table, k=5, exclude=(7, 0, 3)",
             (table[7] + 0.1 * torch.randn(5, generator=g), table, 5), {"exclude": (7, 0, 3)}),
        Case("float64, query that is row 11 of a (20, 8) table, k=6, exclude=(11,)",
             (wide[11].clone(), wide, 6), {"exclude": (11,)}),
        Case("k=1, query outside a (15, 5) table, exclude=(1,)",
             (torch.randn(5, generator=g), table, 1), {"exclude": (1,)}),
        Case("float64, a query opposite rows 0 and 1 of a (9, 5) table, k=6, exclude=(1, 4)",
             (_pointing_away(away, (0, 1)), away, 6), {"exclude": (1, 4)}),
    ]


def _nearest_ascending_masked(query, table, k, exclude=()):
    return _masked_similarities(query, table, exclude).argsort()[:k]


def _nearest_ascending_filtered(query, table, k, exclude=()):
    order = [i for i in cosine_similarity(query, table).argsort().tolist() if i not in exclude]
    return torch.tensor(order[:k])


def _nearest_right_rows_reversed(query, table, k, exclude=()):
    return nearest_neighbours(query, table, k, exclude).flip(0)


def _nearest_not_excluded(query, table, k, exclude=()):
    return cosine_similarity(query, table).topk(k).indices


def _nearest_excluded_scored_0(query, table, k, exclude=()):
    return _masked_similarities(query, table, exclude, fill=0.0).topk(k).indices


def _nearest_excluded_after(query, table, k, exclude=()):
    picked = cosine_similarity(query, table).topk(k).indices.tolist()
    return torch.tensor([i for i in picked if i not in exclude], dtype=torch.int64)


def _dot_score(query, table):
    return (query * table).sum(-1)


def _nearest_by_dot(query, table, k, exclude=()):
    return _masked_similarities(query, table, exclude, _dot_score).topk(k).indices


def _negative_distance(query, table):
    return -(table - query).norm(dim=-1)


def _nearest_by_distance(query, table, k, exclude=()):
    return _masked_similarities(query, table, exclude, _negative_distance).topk(k).indices


_ASCENDING = ("Your list starts with the least similar rows: the sort is in ascending order. "
              "Sort by similarity in descending order (torch.topk, or "
              "argsort(descending=True)).")

register(Exercise(
    id="nearest_neighbours",
    chapter=CHAPTER,
    title="Exercise 3: nearest neighbours",
    reference=nearest_neighbours,
    visible=_nearest_visible,
    hidden=_nearest_hidden,
    compare=_compare_indices,
    mistakes=(
        Mistake("sorted ascending", _ASCENDING, _nearest_ascending_masked),
        Mistake("sorted ascending (rows removed)", _ASCENDING, _nearest_ascending_filtered),
        Mistake("best last",
                "You found the right rows but in the wrong order: the most similar row must "
                "come first. Sort by similarity in descending order.",
                _nearest_right_rows_reversed),
        Mistake("exclude ignored",
                "Your neighbours include rows listed in `exclude` (for example the query "
                "word itself, which is always its own nearest neighbour). Set their "
                "similarity to -inf before picking the top k.",
                _nearest_not_excluded),
        Mistake("excluded rows scored 0",
                "You give the excluded rows a similarity of 0, but cosine similarities lie "
                "between -1 and 1: an excluded row then beats every row with a negative "
                "similarity and comes back. Set them to float('-inf'), which loses every "
                "comparison.",
                _nearest_excluded_scored_0),
        Mistake("excluded after picking k",
                "You picked the top k first and removed the excluded rows afterwards, so you "
                "return fewer than k rows. Remove (or set to -inf) the excluded rows before "
                "picking the top k.",
                _nearest_excluded_after),
        Mistake("ranked by dot product",
                "You ranked the rows by the plain dot product, which favours long vectors. "
                "Rank by cosine similarity (your cosine_similarity from Exercise 2).",
                _nearest_by_dot),
        Mistake("ranked by distance",
                "You ranked the rows by Euclidean distance. This exercise ranks by cosine "
                "similarity, which ignores the lengths of the vectors.",
                _nearest_by_distance),
    ),
    forbidden=("gptcourse.checks.tokens_and_embeddings.nearest_neighbours",),
))


# -- analogies --------------------------------------------------------------------------

def _analogy_visible():
    g = torch.Generator().manual_seed(401)
    return [
        Case("a (12, 5) table, a=0, b=1, c=2", (_table(g, 12, 5), 0, 1, 2)),
        Case("a (16, 6) table, a=5, b=9, c=3, k=3", (_table(g, 16, 6), 5, 9, 3), {"k": 3}),
        Case("a (12, 5) table, a=3, b=7, c=10, k=3", (_table(g, 12, 5), 3, 7, 10), {"k": 3}),
    ]


def _analogy_hidden():
    g = torch.Generator().manual_seed(402)
    return [
        Case("a (20, 4) table, a=11, b=2, c=17, k=4", (_table(g, 20, 4), 11, 2, 17), {"k": 4}),
        Case("float64, a (25, 8) table, a=24, b=0, c=13, k=2",
             (_table(g, 25, 8, torch.float64), 24, 0, 13), {"k": 2}),
        Case("a (10, 3) table, a=4, b=8, c=6", (_table(g, 10, 3), 4, 8, 6)),
    ]


def _analogy_swapped(table, a, b, c, k=1):
    return nearest_neighbours(table[b] - table[c] + table[a], table, k, exclude=(a, b, c))


def _analogy_flipped(table, a, b, c, k=1):
    return nearest_neighbours(table[a] - table[b] + table[c], table, k, exclude=(a, b, c))


def _analogy_normalised(table, a, b, c, k=1):
    unit = table / table.norm(dim=-1, keepdim=True)
    return nearest_neighbours(unit[b] - unit[a] + unit[c], table, k, exclude=(a, b, c))


def _analogy_not_excluded(table, a, b, c, k=1):
    return nearest_neighbours(table[b] - table[a] + table[c], table, k)


register(Exercise(
    id="analogy",
    chapter=CHAPTER,
    title="Exercise 4: analogies by vector arithmetic",
    reference=analogy,
    visible=_analogy_visible,
    hidden=_analogy_hidden,
    compare=_compare_indices,
    mistakes=(
        Mistake("king - woman + man",
                "You computed table[b] - table[c] + table[a] (king - woman + man). For "
                "'a is to b as c is to ?' start from b, remove a and add c: "
                "table[b] - table[a] + table[c].",
                _analogy_swapped),
        Mistake("man - king + woman",
                "You computed table[a] - table[b] + table[c] (man - king + woman): the "
                "signs of a and b are flipped. Use table[b] - table[a] + table[c].",
                _analogy_flipped),
        Mistake("inputs not excluded",
                "Your answer can be one of the three input words, which usually sit closest "
                "to the target. Exclude a, b and c from the search (exclude=(a, b, c)).",
                _analogy_not_excluded),
        Mistake("vectors normalised first",
                "You normalised the vectors before the arithmetic. The target is made of "
                "the vectors as they are, table[b] - table[a] + table[c]: their lengths "
                "count too; only the final search compares by angle.",
                _analogy_normalised),
    ),
    forbidden=("gptcourse.checks.tokens_and_embeddings.analogy",),
))
