"""Training: splits, batches, the loop, and checkpoints."""

import math

import pytest
import torch

from gptcourse import training
from gptcourse.model import GPT, GPTConfig
from gptcourse.tokens import CharTokenizer
from gptcourse.tolerances import assert_close

# A short run must get the validation loss well below ln(66) = 4.19 (uniform guessing)
# and below the ~3.3 nats a model of single-character frequencies reaches: under 2.6
# means it has learned which characters follow which.
VAL_LOSS_THRESHOLD = 2.6


def _tiny_model(vocab_size: int = 11, context_length: int = 8, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=context_length, d_model=16,
                         n_heads=2, n_layers=1))


def test_split_keeps_the_end_for_validation():
    data = torch.arange(100)

    train, val = training.split_data(data, val_fraction=0.1)

    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    with pytest.raises(ValueError, match="between 0 and 1"):
        training.split_data(data, val_fraction=1.0)


def test_batches_are_windows_with_targets_shifted_by_one():
    data = torch.arange(1000) * 7 % 997  # distinct values, so a window names its start
    g = torch.Generator().manual_seed(0)

    x, y = training.get_batch(data, batch_size=32, context_length=16, generator=g)

    assert x.shape == y.shape == (32, 16) and x.dtype == data.dtype
    for row_x, row_y in zip(x, y, strict=True):
        start = (data == row_x[0]).nonzero().item()
        assert row_x.tolist() == data[start:start + 16].tolist()
        assert row_y.tolist() == data[start + 1:start + 17].tolist()


def test_batches_reach_the_last_token_but_never_past_it():
    context_length = 4
    data = torch.arange(context_length + 3)  # three possible windows: starts 0, 1, 2
    g = torch.Generator().manual_seed(0)

    x, y = training.get_batch(data, batch_size=300, context_length=context_length,
                              generator=g)

    assert set(x[:, 0].tolist()) == {0, 1, 2}
    assert int(y.max()) == len(data) - 1


def test_a_corpus_of_exactly_one_window_gives_that_window():
    data = torch.arange(9)

    x, y = training.get_batch(data, batch_size=3, context_length=8)

    assert (x == data[:-1]).all() and (y == data[1:]).all()


def test_too_little_data_is_a_clear_error():
    with pytest.raises(ValueError, match="8 tokens.*context_length 8.*9 tokens"):
        training.get_batch(torch.arange(8), batch_size=2, context_length=8)


def test_batches_are_reproducible_with_a_seeded_generator():
    data = torch.arange(500)
    a = training.get_batch(data, 4, 8, torch.Generator().manual_seed(3))
    b = training.get_batch(data, 4, 8, torch.Generator().manual_seed(3))

    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_estimate_loss_is_the_mean_over_batches_in_eval_mode():
    model = _tiny_model()
    model.train()
    splits = {"train": torch.arange(200) % 11, "val": (torch.arange(200) * 3) % 11}

    losses = training.estimate_loss(model, splits, eval_iters=3, batch_size=4,
                                    generator=torch.Generator().manual_seed(5))

    assert model.training  # mode restored
    g = torch.Generator().manual_seed(5)
    model.eval()
    for name, data in splits.items():
        expected = []
        for _ in range(3):
            x, y = training.get_batch(data, 4, 8, g)
            logits = model(x)[0]
            expected.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                              y.flatten()).item())
        assert losses[name] == pytest.approx(sum(expected) / 3, rel=1e-5)


def test_weight_decay_applies_to_matrices_only():
    model = _tiny_model()

    optimizer = training.make_optimizer(model, lr=1e-3, weight_decay=0.1)

    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0
               for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.dim() >= 2), name
    assert isinstance(optimizer, torch.optim.AdamW)


def test_cosine_schedule_warms_up_then_decays_to_the_minimum():
    lrs = [training.cosine_lr(s, 100, 1e-3, 1e-4, warmup_iters=10) for s in range(101)]

    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[100] == pytest.approx(1e-4)
    assert lrs[55] == pytest.approx(5.5e-4)  # halfway down the cosine
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_training_is_reproducible_and_records_its_history():
    data = torch.arange(400) % 11

    runs = []
    for _ in range(2):
        model = _tiny_model()
        history = training.train(model, data[:300], data[300:], max_iters=6, batch_size=4,
                                 eval_interval=3, eval_iters=2, seed=1, progress=False)
        runs.append((history, model.state_dict()))

    (h1, s1), (h2, s2) = runs
    assert h1.steps == [0, 3, 6]
    assert len(h1.train_loss) == len(h1.val_loss) == 3 and len(h1.iter_loss) == 6
    assert h1.iter_loss == h2.iter_loss and h1.val_loss == h2.val_loss
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


@pytest.mark.slow
def test_a_short_run_on_tiny_shakespeare_learns(corpus_text):
    tokenizer = CharTokenizer.from_text(corpus_text)
    data = torch.tensor(tokenizer.encode(corpus_text))
    train_data, val_data = training.split_data(data)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=32, d_model=64,
                          n_heads=4, n_layers=2))

    history = training.train(model, train_data, val_data, max_iters=200, batch_size=32,
                             lr=3e-3, eval_interval=100, eval_iters=10, seed=0,
                             progress=False)

    # At initialisation every token is about equally likely: loss ~ ln(vocab_size).
    assert history.val_loss[0] == pytest.approx(math.log(tokenizer.vocab_size), abs=0.1)
    assert history.val_loss[-1] < VAL_LOSS_THRESHOLD, history


def test_checkpoint_round_trip(tmp_path):
    model = _tiny_model(seed=3)
    optimizer = training.make_optimizer(model)
    data = torch.arange(300) % 11
    training.train(model, data, data, max_iters=2, batch_size=4, eval_iters=1,
                   optimizer=optimizer, progress=False)

    path = training.save_checkpoint(tmp_path / "ckpt" / "model.pt", model, optimizer, step=2)

    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["config"] == {**model.config.__dict__} and raw["step"] == 2
    loaded = training.load_checkpoint(path)
    idx = torch.randint(11, (2, 8), generator=torch.Generator().manual_seed(0))
    model.eval()
    loaded.eval()
    assert_close(loaded(idx)[0], model(idx)[0])
    restored = training.make_optimizer(loaded)
    restored.load_state_dict(training.read_checkpoint(path)["optimizer"])
    for a, b in zip(optimizer.state_dict()["state"].values(),
                    restored.state_dict()["state"].values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_loading_something_else_is_a_clear_error(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")

    with pytest.raises(ValueError, match="not a gptcourse checkpoint"):
        training.load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        training.load_checkpoint(tmp_path / "missing.pt")
