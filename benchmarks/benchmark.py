"""Speed of the reference GPT, measured side by side in one run and printed as ratios.

1. Training throughput (tokens/s) at n_layers 4, n_heads 4, d_model 128, context_length 64,
   batch 12 on Tiny Shakespeare, with the plain attention path and with the fast path
   (torch's fused scaled_dot_product_attention, ``GPTConfig.fast_attention``).
   Target: fast >= plain.
2. Generation of 500 new tokens after a short prompt at context_length 512, with and
   without the KV cache (greedy, so both must produce the same tokens).
   Target: the cache >= 5x faster.
3. With ``--full``: a 2000-step training run (AdamW, lr 1e-3, dropout 0) at the config of 1,
   reporting the validation loss and the time. Target: validation loss <= 1.89.

The two variants of each measurement alternate in short blocks and the median block is
reported, so a change in the machine's load affects both alike.

    python benchmarks/benchmark.py            # 1 and 2
    python benchmarks/benchmark.py --quick    # 1 and 2, shorter (a smoke test)
    python benchmarks/benchmark.py --full     # 1, 2 and 3
"""

import argparse
import statistics
import time

import torch

from gptcourse.data import load_corpus
from gptcourse.generation import generate
from gptcourse.model import GPT, GPTConfig
from gptcourse.tokens import CharTokenizer
from gptcourse.training import get_batch, make_optimizer, split_data, train

# A well-known minimal GPT at the training config runs at about this speed on a quiet
# 2-core machine (about 64 ms per step), and reaches this validation loss in 2000 steps.
REFERENCE_TOKENS_PER_S = 12_000
TARGET_VAL_LOSS = 1.89

TRAIN_CONFIG = dict(context_length=64, d_model=128, n_heads=4, n_layers=4, dropout=0.0)
BATCH_SIZE = 12
PROMPT = "ROMEO:\n"


def _model(vocab_size: int, seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, **{**TRAIN_CONFIG, **overrides}))


def _time_training(model: GPT, data: torch.Tensor, steps: int,
                   g: torch.Generator) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per training step (forward, backward, AdamW step),
    averaged over ``steps``. On a busy machine the CPU time is the steadier figure."""
    optimizer = make_optimizer(model, lr=1e-3)
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        x, y = get_batch(data, BATCH_SIZE, model.config.context_length, g)  # (B, T)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return ((time.perf_counter() - start) / steps, (time.process_time() - cpu_start) / steps)


def bench_training(data: torch.Tensor, vocab_size: int, steps: int, blocks: int) -> None:
    models = {"plain": _model(vocab_size, fast_attention=False),
              "fast": _model(vocab_size, fast_attention=True)}
    g = torch.Generator().manual_seed(0)
    for model in models.values():
        _time_training(model, data, 3, g)  # warm-up: allocator, kernels

    per_step = {name: [] for name in models}
    cpu_per_step = {name: [] for name in models}
    for _ in range(blocks):
        for name, model in models.items():
            wall, cpu = _time_training(model, data, steps, g)
            per_step[name].append(wall)
            cpu_per_step[name].append(cpu)

    tokens = BATCH_SIZE * TRAIN_CONFIG["context_length"]
    rate = {name: tokens / statistics.median(times) for name, times in per_step.items()}
    print(f"\nTraining, batch {BATCH_SIZE} x {TRAIN_CONFIG['context_length']} tokens, "
          f"{blocks} blocks of {steps} steps (median):")
    for name in models:
        print(f"  {name:<6} {1000 * statistics.median(per_step[name]):7.1f} ms/step "
              f"{rate[name]:9,.0f} tokens/s  "
              f"(CPU time {1000 * statistics.median(cpu_per_step[name]):.1f} ms/step)")
    print(f"  fast / plain             = {rate['fast'] / rate['plain']:.2f}x  (target >= 1)")
    print(f"  fast / reference GPT     = {rate['fast'] / REFERENCE_TOKENS_PER_S:.2f}x  "
          f"(its {REFERENCE_TOKENS_PER_S:,} tokens/s on a quiet 2-core machine; not measured "
          "here)")


def bench_generation(tokenizer: CharTokenizer, new_tokens: int, repeats: int) -> None:
    model = _model(tokenizer.vocab_size, seed=1, context_length=512)
    model.eval()
    prompt = torch.tensor([tokenizer.encode(PROMPT)])  # (1, T0)
    if prompt.size(1) + new_tokens > 512:
        raise SystemExit(f"--gen-tokens {new_tokens} does not fit the context of 512 "
                         f"after a {prompt.size(1)}-token prompt")

    seconds = {True: [], False: []}
    outputs = {}
    for _ in range(repeats):
        for use_cache in (True, False):
            start = time.perf_counter()
            outputs[use_cache] = generate(model, prompt, new_tokens, temperature=0.0,
                                          use_cache=use_cache)
            seconds[use_cache].append(time.perf_counter() - start)

    same = torch.equal(outputs[True], outputs[False])
    with_cache, without = (statistics.median(seconds[c]) for c in (True, False))
    print(f"\nGeneration of {new_tokens} tokens after a {prompt.size(1)}-token prompt, "
          f"context_length 512, greedy, median of {repeats}:")
    print(f"  without cache {without:7.2f} s {new_tokens / without:8.0f} tokens/s")
    print(f"  with cache    {with_cache:7.2f} s {new_tokens / with_cache:8.0f} tokens/s")
    print(f"  cache speed-up = {without / with_cache:.1f}x  (target >= 5); "
          f"same tokens: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit("the KV cache changed the generated tokens")


def full_run(data: torch.Tensor, vocab_size: int, iters: int) -> None:
    train_data, val_data = split_data(data)
    model = _model(vocab_size)
    print(f"\nFull training run: {iters} steps, AdamW lr 1e-3 (cosine to 1e-4 after 100 "
          "warm-up steps), weight decay 0.1, dropout 0, fast attention", flush=True)
    history = train(model, train_data, val_data, max_iters=iters, batch_size=BATCH_SIZE,
                    lr=1e-3, min_lr=1e-4, warmup_iters=100, eval_interval=max(1, iters // 4),
                    eval_iters=200, seed=0)
    per_step = history.seconds / iters
    verdict = "meets" if history.val_loss[-1] <= TARGET_VAL_LOSS else "MISSES"
    print(f"  validation loss {history.val_loss[-1]:.4f} ({verdict} the target "
          f"<= {TARGET_VAL_LOSS}); train loss {history.train_loss[-1]:.4f}")
    print(f"  time {history.seconds:.0f} s, {1000 * per_step:.1f} ms/step including "
          "evaluation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test)")
    parser.add_argument("--full", action="store_true", help="also the 2000-step training run")
    parser.add_argument("--train-steps", type=int, help="steps per timing block")
    parser.add_argument("--blocks", type=int, help="timing blocks per variant")
    parser.add_argument("--gen-tokens", type=int, help="new tokens to generate (<= 505)")
    parser.add_argument("--repeats", type=int, help="generation repeats per variant")
    parser.add_argument("--full-iters", type=int, default=2000)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    steps = args.train_steps or (5 if args.quick else 20)
    blocks = args.blocks or (2 if args.quick else 5)
    new_tokens = args.gen_tokens or (100 if args.quick else 500)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)

    corpus = load_corpus()
    tokenizer = CharTokenizer.from_text(corpus.text)
    data = torch.tensor(tokenizer.encode(corpus.text))  # (N,)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; corpus: "
          f"{corpus.name}, {len(data):,} tokens, vocab_size {tokenizer.vocab_size}")

    bench_training(data, tokenizer.vocab_size, steps, blocks)
    bench_generation(tokenizer, new_tokens, repeats)
    if args.full:
        full_run(data, tokenizer.vocab_size, args.full_iters)


if __name__ == "__main__":
    main()
