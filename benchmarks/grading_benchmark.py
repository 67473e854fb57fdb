"""How much grading costs compared with running a chapter plainly.

Runs, side by side, for one chapter's solution notebook:

1. plain execution: nbclient runs the notebook once in a fresh kernel;
2. grading it as one learner's submission with ``gptcourse grade`` (nbgrader's autograde
   of the whole notebook, the sandbox's run of every exercise, feedback, gradebook);
3. the sandbox part alone (``--no-autograde``);
4. a class of ``--students`` copies of the submission (default 30) with ``--jobs``.

Prints each time and the ratio grading / plain execution (the goal is at most 1.5).

    python benchmarks/grading_benchmark.py [--chapter 03-self-attention] [--students 30]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def plain_run(path: Path) -> float:
    nb = nbformat.read(str(path), as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - started


def grade(submissions: Path, output: Path, *extra: str) -> float:
    from gptcourse.cli import main

    started = time.perf_counter()
    code = main(["grade", str(submissions), str(output), "--db",
                 f"sqlite:///{output / 'gradebook.db'}", *extra])
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"gptcourse grade exited with {code}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = "03-self-attention" if (REPO / "solutions" / "03-self-attention").is_dir() \
        else "00-welcome"
    parser.add_argument("--chapter", default=default)
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of the single-submission timings; the best is kept")
    args = parser.parse_args()
    os.environ.setdefault("GPTCOURSE_QUICK", "1")

    from gptcourse.release import chapter_notebook

    source = chapter_notebook(args.chapter, REPO)
    work = Path(tempfile.mkdtemp(prefix="gptcourse-bench-"))
    try:
        one = work / "one"
        (one / "learner" / args.chapter).mkdir(parents=True)
        shutil.copy(source, one / "learner" / args.chapter / source.name)

        plain = min(plain_run(source) for _ in range(args.repeats))
        full = min(grade(one, work / f"out-full-{i}", "--force")
                   for i in range(args.repeats))
        sandbox = min(grade(one, work / f"out-sandbox-{i}", "--force", "--no-autograde")
                      for i in range(args.repeats))

        klass = work / "class"
        for n in range(args.students):
            folder = klass / f"learner{n:03d}" / args.chapter
            folder.mkdir(parents=True)
            shutil.copy(source, folder / source.name)
        class_time = grade(klass, work / "out-class", "--jobs", str(args.jobs))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nchapter {args.chapter} ({source.name}), {os.cpu_count()} cores")
    print(f"  plain execution (nbclient, fresh kernel)     {plain:7.1f} s")
    print(f"  gptcourse grade, one submission              {full:7.1f} s   "
          f"ratio {full / plain:.2f} (goal <= 1.5)")
    print(f"  of which the sandbox alone (--no-autograde)  {sandbox:7.1f} s   "
          f"ratio {sandbox / plain:.2f}")
    print(f"  a class of {args.students} submissions, --jobs {args.jobs}       "
          f"{class_time:7.1f} s   ({class_time / args.students:.1f} s per submission)")


if __name__ == "__main__":
    sys.exit(main())
