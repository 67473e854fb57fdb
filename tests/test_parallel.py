"""Data-parallel training with torchrun: two processes on the CPU (gloo) take the same step
as one process on the whole batch."""

import os

import pytest
import torch

from gptcourse import parallel
from gptcourse.data import fallback_text
from gptcourse.model import GPT, GPTConfig
from gptcourse.tolerances import assert_close
from gptcourse.training import make_optimizer


def test_shards_split_the_batch_in_order():
    batch = torch.arange(12).reshape(6, 2)

    parts = [parallel.shard(batch, rank, 3) for rank in range(3)]

    assert torch.equal(torch.cat(parts), batch)
    with pytest.raises(ValueError, match="batch_size 6 does not split evenly over 4"):
        parallel.shard(batch, 0, 4)


def test_running_without_torchrun_says_how_to_start_it(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)

    with pytest.raises(RuntimeError, match="torch.distributed.run"):
        parallel.init_distributed()


@pytest.mark.slow
def test_two_processes_take_the_same_step_as_one(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(fallback_text()[:20_000], encoding="utf-8")
    args = ["--steps", "1", "--batch-size", "8", "--context-length", "16", "--d-model", "32",
            "--n-heads", "2", "--n-layers", "1", "--lr", "1e-2", "--eval-iters", "1",
            "--corpus", str(corpus), "--save-dir", str(tmp_path), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    result = parallel.launch(2, args, env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "after 1 steps on 2 processes" in result.stdout  # rank 0 reports, once
    assert result.stdout.count("after 1 steps") == 1

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name

    # One process, the same initial weights, the whole batch, the same optimizer.
    initial = torch.load(tmp_path / "initial.pt", weights_only=True)
    (x, y), = torch.load(tmp_path / "batches.pt", weights_only=True)
    assert x.shape == (8, 16)
    model = GPT(GPTConfig(**initial["config"]))
    model.load_state_dict(initial["model"])
    optimizer = make_optimizer(model, lr=1e-2)
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()

    single = model.state_dict()
    for name in single:
        assert not torch.equal(single[name], initial["model"][name]) or name.endswith("bias")
        assert_close(rank0[name], single[name], msg=f"{name} differs from one process")
