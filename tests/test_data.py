"""Corpus loading: download, verification, cache, overrides and the offline stand-in.

No test touches the network: downloads come from file:// URLs of local copies, and a
missing network is simulated by replacing ``urllib.request.urlopen``.
"""

import hashlib
import io
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gptcourse import data
from gptcourse.data import CorpusError, DownloadError, load_corpus

EXPECTED_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder, and no corpus override."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("GPTCOURSE_CACHE_DIR", str(folder))
    monkeypatch.delenv("GPTCOURSE_CORPUS", raising=False)
    return folder


@pytest.fixture
def corpus_bytes(corpus_path) -> bytes:
    return corpus_path.read_bytes()


def _serve(tmp_path: Path, content: bytes) -> str:
    """A file:// URL serving ``content``."""
    source = tmp_path / "served.txt"
    source.write_bytes(content)
    return source.as_uri()


def _offline(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_the_stated_checksum_is_that_of_the_shared_copy(corpus_bytes):
    assert len(corpus_bytes) == data.TINY_SHAKESPEARE_BYTES == 1_115_394
    assert hashlib.sha256(corpus_bytes).hexdigest() == EXPECTED_SHA256
    assert data.TINY_SHAKESPEARE_SHA256 == EXPECTED_SHA256


def test_first_use_downloads_verifies_and_caches(cache, tmp_path, corpus_bytes):
    corpus = load_corpus(url=_serve(tmp_path, corpus_bytes))

    assert corpus.text == corpus_bytes.decode("utf-8")
    assert corpus.name == "Tiny Shakespeare" and not corpus.fallback
    assert _files(cache) == [data.FILENAME]  # no temporary file left behind
    assert (cache / data.FILENAME).read_bytes() == corpus_bytes


def test_a_cached_copy_is_used_without_the_network(cache, tmp_path, corpus_bytes,
                                                   monkeypatch):
    load_corpus(url=_serve(tmp_path, corpus_bytes))
    _offline(monkeypatch)

    corpus = load_corpus()

    assert corpus.source == str(cache / data.FILENAME)
    assert corpus.text == corpus_bytes.decode("utf-8")


def test_a_partial_download_raises_and_leaves_nothing(cache, tmp_path, corpus_bytes):
    url = _serve(tmp_path, corpus_bytes[: len(corpus_bytes) // 2])

    with pytest.raises(DownloadError, match="incomplete") as err:
        load_corpus(url=url)

    assert "GPTCOURSE_CORPUS" in str(err.value)  # says how to supply the file
    assert _files(cache) == []


def test_a_wrong_checksum_raises_and_leaves_nothing(cache, tmp_path, corpus_bytes):
    tampered = bytearray(corpus_bytes)
    tampered[1000] ^= 0x01  # same size, one bit different

    with pytest.raises(DownloadError, match="wrong checksum") as err:
        load_corpus(url=_serve(tmp_path, bytes(tampered)))

    assert "GPTCOURSE_CORPUS" in str(err.value)
    assert _files(cache) == []


def test_a_connection_lost_midway_raises_instead_of_falling_back(cache, corpus_bytes,
                                                                 monkeypatch):
    class Dropping(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 100_000:
                raise ConnectionResetError("connection reset by peer")
            return super().read(size)

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Dropping(corpus_bytes))

    with pytest.raises(DownloadError, match="part-way"):
        load_corpus(allow_fallback=True)

    assert _files(cache) == []


def test_an_http_error_is_not_mistaken_for_being_offline(cache, monkeypatch):
    def not_found(url, *args, **kwargs):
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)

    monkeypatch.setattr(urllib.request, "urlopen", not_found)

    with pytest.raises(DownloadError, match="HTTP 404"):
        load_corpus(allow_fallback=True)


def test_offline_falls_back_to_the_pydoc_topics_with_a_notice(cache, monkeypatch, capsys):
    from pydoc_data.topics import topics

    _offline(monkeypatch)

    corpus = load_corpus()

    assert corpus.fallback
    for key in ("assert", "lambda", "with"):
        assert topics[key].strip() in corpus.text
    assert len(corpus.text) > 100_000  # enough text to train a character model on
    notice = capsys.readouterr().err
    assert "offline stand-in" in notice and "GPTCOURSE_CORPUS" in notice
    assert _files(cache) == []


def test_offline_without_fallback_raises(cache, monkeypatch):
    _offline(monkeypatch)

    with pytest.raises(CorpusError, match="Could not connect"):
        load_corpus(allow_fallback=False)


def test_a_corrupt_cache_is_replaced_by_a_fresh_download(cache, tmp_path, corpus_bytes,
                                                         caplog):
    cache.mkdir()
    (cache / data.FILENAME).write_bytes(corpus_bytes[:-10] + b"corrupted!")

    with caplog.at_level(logging.WARNING, logger="gptcourse.data"):
        corpus = load_corpus(url=_serve(tmp_path, corpus_bytes))

    assert "corrupt" in caplog.text
    assert corpus.text == corpus_bytes.decode("utf-8")
    assert hashlib.sha256((cache / data.FILENAME).read_bytes()).hexdigest() == EXPECTED_SHA256


def test_a_corrupt_cache_without_network_is_a_clear_error(cache, corpus_bytes, monkeypatch):
    cache.mkdir()
    (cache / data.FILENAME).write_bytes(corpus_bytes[:5000])
    _offline(monkeypatch)

    with pytest.raises(CorpusError, match="corrupt") as err:
        load_corpus(allow_fallback=True)

    assert "GPTCOURSE_CORPUS" in str(err.value)
    assert _files(cache) == []


def test_the_environment_variable_overrides_the_source(cache, corpus_path, monkeypatch):
    monkeypatch.setenv("GPTCOURSE_CORPUS", str(corpus_path))
    _offline(monkeypatch)  # proves nothing is downloaded

    corpus = load_corpus()

    assert corpus.name == "Tiny Shakespeare" and corpus.source == str(corpus_path)
    assert _files(cache) == []


def test_a_path_argument_beats_the_environment_variable(cache, tmp_path, monkeypatch):
    own = tmp_path / "own.txt"
    own.write_text("To be, or not to be\n", encoding="utf-8")
    monkeypatch.setenv("GPTCOURSE_CORPUS", str(tmp_path / "elsewhere.txt"))

    corpus = load_corpus(path=own)

    assert corpus.text == "To be, or not to be\n"
    assert corpus.name == "own.txt"


def test_a_missing_override_names_the_path(cache, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.txt"
    monkeypatch.setenv("GPTCOURSE_CORPUS", str(missing))

    with pytest.raises(CorpusError, match="nowhere.txt.*does not exist"):
        load_corpus()


def test_an_unwritable_cache_folder_says_how_to_choose_another(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GPTCOURSE_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    monkeypatch.delenv("GPTCOURSE_CORPUS", raising=False)

    with pytest.raises(CorpusError, match="GPTCOURSE_CACHE_DIR to a writable folder"):
        load_corpus()


def test_cache_folder_follows_the_platform_conventions(monkeypatch, tmp_path):
    monkeypatch.delenv("GPTCOURSE_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))

    monkeypatch.setattr(data.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "gptcourse"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.cache_dir() == tmp_path / ".cache" / "gptcourse"

    monkeypatch.setattr(data.sys, "platform", "darwin")
    assert data.cache_dir() == tmp_path / "Library" / "Caches" / "gptcourse"

    monkeypatch.setenv("GPTCOURSE_CACHE_DIR", str(tmp_path / "mine"))
    assert data.cache_dir() == tmp_path / "mine"


def test_corpus_status_reports_each_state(cache, tmp_path, corpus_path, corpus_bytes,
                                          monkeypatch):
    ok, line = data.corpus_status()
    assert ok and "not downloaded yet" in line

    cache.mkdir()
    (cache / data.FILENAME).write_bytes(b"not shakespeare")
    ok, line = data.corpus_status()
    assert not ok and "corrupt" in line

    (cache / data.FILENAME).write_bytes(corpus_bytes)
    ok, line = data.corpus_status()
    assert ok and "verified" in line

    monkeypatch.setenv("GPTCOURSE_CORPUS", str(tmp_path / "missing.txt"))
    ok, line = data.corpus_status()
    assert not ok and "does not exist" in line
