"""The ``gptcourse`` command line: doctor, check, release, grade.

Each subcommand lives in its own module, which provides ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Modules are imported
only when their subcommand runs, so ``gptcourse doctor`` works even when a dependency of
another subcommand is broken.
"""

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "doctor": "gptcourse.doctor",
    "check": "gptcourse.selfcheck",
    "release": "gptcourse.release",
    "grade": "gptcourse.grading.command",
}

SUMMARIES = {
    "doctor": "check that every dependency, the corpus and torch work; exit 1 on any FAIL",
    "check": "run a notebook headless in a fresh kernel and report each exercise",
    "release": "regenerate the student notebooks in notebooks/ from solutions/ (instructors)",
    "grade": "autograde a class's submissions into a CSV report and feedback (instructors)",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="gptcourse",
        description="Build a GPT-style transformer from scratch: course tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in SUMMARIES.items():
        subparsers.add_parser(name, help=summary, add_help=False)

    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)
        parser.print_help()
        return 2

    name = argv[0]
    module = importlib.import_module(SUBCOMMANDS[name])
    sub = argparse.ArgumentParser(prog=f"gptcourse {name}", description=module.HELP)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
