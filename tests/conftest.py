"""Shared test fixtures. Plots render off screen (Agg), before anything imports pyplot."""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def corpus_path() -> Path:
    """Tiny Shakespeare: ``$GPTCOURSE_CORPUS``, else ``../shared/data/tinyshakespeare.txt``,
    else the verified copy the course downloads (skipped when there is none)."""
    if os.environ.get("GPTCOURSE_CORPUS"):
        path = Path(os.environ["GPTCOURSE_CORPUS"])
        assert path.is_file(), f"GPTCOURSE_CORPUS={path} does not exist"
        return path
    if DEFAULT_CORPUS.is_file():
        return DEFAULT_CORPUS

    from gptcourse.data import CorpusError, load_corpus

    try:
        return Path(load_corpus(allow_fallback=False).source)
    except CorpusError as err:
        pytest.skip(f"Tiny Shakespeare is not available: {err}")


@pytest.fixture(scope="session")
def corpus_text(corpus_path: Path) -> str:
    return corpus_path.read_text(encoding="utf-8")
