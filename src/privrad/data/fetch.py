"""``privrad data fetch NAME``: download a public dataset from its public sources and verify it.

Only public, credential-free datasets can be fetched (today: Open-i). Every file is checked
against the sha256 privrad pins for it; the files are written into a temporary folder beside
the destination and the folder is renamed into place only when every file verified, so a
corrupt, partial or interrupted download leaves nothing behind. ``--mirror`` reads the same
files from another place (a ``file://`` folder, an institutional mirror) — they must still
match the pinned checksums.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from privrad.errors import ConfigError, DataError
from privrad.io import atomic_dir


@dataclass(frozen=True)
class Source:
    """The files of one fetchable dataset: ``(file name, URL, sha256)`` and a licence line."""

    name: str
    files: tuple[tuple[str, str, str], ...]
    licence: str
    default_dir: str


def _sources() -> dict[str, Source]:
    from privrad.data import openi

    return {"openi": Source("openi", openi.SOURCES, openi.LICENCE, "data/openi")}


def fetchable() -> list[str]:
    return sorted(_sources())


def source(name: str) -> Source:
    try:
        return _sources()[name]
    except KeyError:
        raise ConfigError(f"privrad cannot download {name!r}: only public datasets can be fetched ({', '.join(fetchable())}); "
                          "credentialed ones (MIMIC-CXR, CT-RATE) must be downloaded from their providers (see data/README.md).") from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(folder: Path, src: Source) -> list[str]:
    """The files of ``src`` that are missing from ``folder`` or differ from their checksum."""
    bad = []
    for fname, _, digest in src.files:
        p = folder / fname
        if not p.is_file() or sha256(p) != digest:
            bad.append(fname)
    return bad


def _download(url: str, dest: Path, timeout: float) -> str:
    """Stream ``url`` into ``dest``; returns the sha256 of what arrived."""
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(dest, "wb") as out:
            for block in iter(lambda: r.read(1 << 20), b""):
                h.update(block)
                out.write(block)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise DataError(f"could not download {url} ({reason}); check the network (or pass --mirror) and run the command again.") from None
    return h.hexdigest()


def fetch(name: str, out: str | os.PathLike | None = None, *, mirror: str | None = None, overwrite: bool = False,
          timeout: float = 60.0, say: Callable[[str], None] = print) -> Path:
    """Download dataset ``name`` into ``out`` (default ``data/<name>``) and verify every file.

    Returns the folder. An existing folder whose files verify is left as it is; one that does
    not is refused unless ``overwrite``. Nothing is written unless every file verified."""
    src = source(name)
    dest = Path(out or src.default_dir)
    if dest.exists():
        bad = verify(dest, src) if dest.is_dir() else ["(not a folder)"]
        if not bad:
            say(f"{name}: {dest} already holds the verified files; nothing to download.")
            return dest
        if not overwrite:
            raise DataError(f"{dest} exists but {', '.join(bad)} is missing or differs from the published file; "
                            "pass --overwrite to replace the folder, or choose another --out.")
    base = mirror.rstrip("/") if mirror else None
    with atomic_dir(dest, overwrite=overwrite) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # a folder like any other, not mkdtemp's private one
        for fname, url, digest in src.files:
            url = f"{base}/{fname}" if base else url
            say(f"{name}: downloading {fname} from {url} …")
            got = _download(url, tmp / fname, timeout)
            if got != digest:
                size = (tmp / fname).stat().st_size
                raise DataError(f"{fname} from {url} ({size} bytes) does not match its published sha256 "
                                f"(a corrupt or partial download); nothing was written to {dest}: run the command again.")
    say(f"{name}: {len(src.files)} files verified in {dest}.")
    say(f"{name}: licence: {src.licence}")
    return dest
