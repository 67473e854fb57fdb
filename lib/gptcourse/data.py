"""The course's corpus: Tiny Shakespeare, downloaded once, verified, and cached.

:func:`load_corpus` finds the text in this order:

1. a local file given as ``path=`` or in the ``GPTCOURSE_CORPUS`` environment variable
   (any UTF-8 text file works; a copy of Tiny Shakespeare is recognised by its checksum);
2. the verified copy in the cache folder (``GPTCOURSE_CACHE_DIR``, otherwise
   ``$XDG_CACHE_HOME/gptcourse``, ``~/.cache/gptcourse``, or ``~/Library/Caches/gptcourse``
   on macOS);
3. a fresh download from :data:`TINY_SHAKESPEARE_URL`, checked for its size and SHA-256
   before it is moved into the cache in one step (a failed, partial or mismatching
   download never stays in the cache);
4. with no network, an offline stand-in every Python installation carries: the English
   documentation topics of the standard library's ``pydoc_data``, with a printed notice.

A cached copy whose checksum is wrong is removed and downloaded again; if that fails the
loader raises :class:`CorpusError` saying how to supply the file by hand.
"""

import hashlib
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_BYTES = 1_115_394
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
FILENAME = "tinyshakespeare.txt"

CORPUS_ENV = "GPTCOURSE_CORPUS"
CACHE_ENV = "GPTCOURSE_CACHE_DIR"

FALLBACK_NAME = "Python documentation topics (pydoc_data)"

_HOW_TO_SUPPLY = (
    f"To supply the file by hand, download {TINY_SHAKESPEARE_URL} "
    f"({TINY_SHAKESPEARE_BYTES:,} bytes) and either save it as {{cached}} or set the "
    f"environment variable {CORPUS_ENV} to its path."
)


class CorpusError(RuntimeError):
    """The corpus could not be loaded; the message says what went wrong and what to do."""


class DownloadError(CorpusError):
    """A download failed. ``offline`` is True when no connection could be made at all."""

    def __init__(self, message: str, offline: bool = False):
        super().__init__(message)
        self.offline = offline


@dataclass(frozen=True)
class Corpus:
    """A loaded corpus: its ``text``, a ``name``, where it came from, and whether it is
    the offline stand-in rather than Tiny Shakespeare."""

    text: str
    name: str
    source: str
    fallback: bool = False


def cache_dir() -> Path:
    """The folder where the verified download is kept (it need not exist yet)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()

    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "gptcourse"

    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "gptcourse" / "Cache"

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "gptcourse"


def cached_path() -> Path:
    """Where the cached copy of Tiny Shakespeare lives."""
    return cache_dir() / FILENAME


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_tiny_shakespeare(path: str | os.PathLike) -> bool:
    """True when the file has exactly Tiny Shakespeare's size and checksum."""
    path = Path(path)
    return (path.is_file() and path.stat().st_size == TINY_SHAKESPEARE_BYTES
            and sha256_of(path) == TINY_SHAKESPEARE_SHA256)


def download(url: str = TINY_SHAKESPEARE_URL, dest: str | os.PathLike | None = None,
             timeout: float = 30.0) -> Path:
    """Download Tiny Shakespeare to ``dest`` (the cache by default) and verify it.

    The bytes go to a temporary file beside ``dest``; only when the size and SHA-256 are
    right is it renamed onto ``dest``, so ``dest`` is never partial or wrong. Raises
    :class:`DownloadError` (``offline=True`` when no connection could be made).
    """
    dest = Path(dest) if dest is not None else cached_path()
    how = _HOW_TO_SUPPLY.format(cached=dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"Cannot create the cache folder {dest.parent} ({err}); set "
                            f"{CACHE_ENV} to a writable folder. {how}") from err

    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise DownloadError(
            f"Downloading {url} failed: HTTP {err.code} {err.reason}. {how}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"Could not connect to {url} ({reason}). {how}",
                            offline=True) from err

    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with response, os.fdopen(fd, "wb") as out:
            # Stop reading a little past the expected size: a wrong file may be huge.
            while size <= TINY_SHAKESPEARE_BYTES:
                chunk = response.read(1 << 16)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)

        if size != TINY_SHAKESPEARE_BYTES:
            raise DownloadError(
                f"The download from {url} is incomplete or not Tiny Shakespeare: got "
                f"{size:,} bytes{' or more' if size > TINY_SHAKESPEARE_BYTES else ''}, "
                f"expected {TINY_SHAKESPEARE_BYTES:,}. {how}")
        if digest.hexdigest() != TINY_SHAKESPEARE_SHA256:
            raise DownloadError(
                f"The download from {url} has the wrong checksum: sha256 "
                f"{digest.hexdigest()}, expected {TINY_SHAKESPEARE_SHA256}. {how}")

        os.replace(tmp, dest)
    except DownloadError:
        raise
    except Exception as err:
        raise DownloadError(f"Downloading {url} failed part-way ({err!r}). {how}") from err
    finally:
        tmp.unlink(missing_ok=True)

    logger.info("Downloaded Tiny Shakespeare to %s", dest)
    return dest


def fallback_text() -> str:
    """The offline stand-in: every topic of the standard library's English documentation
    (``pydoc_data.topics``), in a fixed order, separated by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"The corpus file {path} is not UTF-8 text ({err}).") from err


def _local(path: Path, origin: str) -> Corpus:
    if not path.is_file():
        raise CorpusError(
            f"The corpus file {path} ({origin}) does not exist. Point it at a copy of Tiny "
            f"Shakespeare ({TINY_SHAKESPEARE_URL}) or unset it to use the download cache.")

    if is_tiny_shakespeare(path):
        return Corpus(_read(path), "Tiny Shakespeare", str(path))

    logger.info("Using %s as the corpus; it is not Tiny Shakespeare.", path)
    return Corpus(_read(path), path.name, str(path))


def load_corpus(path: str | os.PathLike | None = None, allow_fallback: bool = True,
                url: str = TINY_SHAKESPEARE_URL) -> Corpus:
    """Load the course corpus (see the module docstring for where it is looked for).

    ``path`` (or ``$GPTCOURSE_CORPUS``) names a local text file to use instead of the
    download. With ``allow_fallback=False``, having no network raises :class:`CorpusError`
    instead of returning the offline stand-in.
    """
    if path is not None:
        return _local(Path(path).expanduser(), "given as path=")
    if os.environ.get(CORPUS_ENV):
        return _local(Path(os.environ[CORPUS_ENV]).expanduser(), f"from ${CORPUS_ENV}")

    cached = cached_path()
    corrupt = cached.exists() and not is_tiny_shakespeare(cached)
    if corrupt:
        logger.warning("The cached corpus %s is corrupt (wrong size or checksum); "
                       "removing it and downloading a fresh copy.", cached)
        cached.unlink()

    if not cached.exists():
        try:
            download(url, cached)
        except DownloadError as err:
            if corrupt:
                raise CorpusError(f"The cached corpus {cached} was corrupt and has been "
                                  f"removed; downloading a fresh copy failed. {err}") from err
            if not (err.offline and allow_fallback):
                raise
            # The learner should know the text is not Shakespeare, so say it on screen
            # rather than only in the log.
            print(f"Notice: {err}\nUsing the offline stand-in corpus instead: "
                  f"{FALLBACK_NAME}.", file=sys.stderr)
            return Corpus(fallback_text(), FALLBACK_NAME, "pydoc_data.topics", fallback=True)

    return Corpus(_read(cached), "Tiny Shakespeare", str(cached))


def load_tiny_shakespeare(path: str | os.PathLike | None = None,
                          allow_fallback: bool = True) -> str:
    """The text of :func:`load_corpus` (Tiny Shakespeare, or the offline stand-in)."""
    return load_corpus(path, allow_fallback=allow_fallback).text


def corpus_status() -> tuple[bool, str]:
    """Whether the corpus is usable, and one line saying which one and where. Downloads
    nothing, so it is quick and works offline (used by ``gptcourse doctor``)."""
    override = os.environ.get(CORPUS_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            return False, f"${CORPUS_ENV} points to {path}, which does not exist"
        if is_tiny_shakespeare(path):
            return True, f"Tiny Shakespeare at {path} (from ${CORPUS_ENV}, verified)"
        return True, f"custom corpus {path} (from ${CORPUS_ENV}; not Tiny Shakespeare)"

    cached = cached_path()
    if cached.exists():
        if is_tiny_shakespeare(cached):
            return True, f"Tiny Shakespeare at {cached} (verified)"
        return False, (f"the cached copy {cached} is corrupt (wrong size or checksum); "
                       "delete it to download it again. "
                       + _HOW_TO_SUPPLY.format(cached=cached))

    return True, (f"Tiny Shakespeare not downloaded yet: it is fetched on first use into "
                  f"{cached}; offline, the course uses {FALLBACK_NAME} instead "
                  f"(set ${CORPUS_ENV} to use a local copy)")
