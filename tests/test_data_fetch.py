"""`privrad data fetch openi` against a file:// mirror of the public files (no network in tests)."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from privrad.data import openi

ROOT = Path(__file__).resolve().parents[1]
OPENI = ROOT.parent / "shared/data/openi"
FILES = [f for f, _, _ in openi.SOURCES]
needs_openi = pytest.mark.skipif(
    not all((OPENI / f).is_file() for f in FILES),
    reason=f"the public Open-i files are not at {OPENI} (CI has them there; see shared/data/openi/README.md)",
)


@pytest.fixture
def privrad(capsys, monkeypatch):
    """``privrad data fetch openi ARGS`` in folder ``cwd``, through the real command line."""
    from privrad.cli import main

    def fetch(*args, cwd):
        monkeypatch.chdir(cwd)
        rc = main(["data", "fetch", "openi", *args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out.out, out.err)

    return fetch


def test_sources_are_pinned_public_files():
    assert FILES == ["indiana_reports.csv", "openi_gld_std14.csv", "openi-testset.txt"]
    for fname, url, digest in openi.SOURCES:
        assert url.startswith("https://") and url.endswith(f"/{fname}") and len(digest) == 64
        assert any(len(part) == 40 for part in url.split("/")), f"{url} is not pinned to a commit"


@needs_openi
def test_fetch_from_a_file_mirror_reproduces_the_files_byte_for_byte(privrad, tmp_path):
    proc = privrad("--mirror", OPENI.as_uri(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "data" / "openi"
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for f in FILES:
        assert filecmp.cmp(out / f, OPENI / f, shallow=False), f
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)
    # a second fetch sees the verified files and downloads nothing
    again = privrad("--mirror", "file:///nonexistent", cwd=tmp_path)
    assert again.returncode == 0 and "already holds the verified files" in again.stdout


@needs_openi
def test_a_truncated_file_is_refused_and_nothing_is_written(privrad, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for f in FILES:
        shutil.copyfile(OPENI / f, mirror / f)
    with open(mirror / "openi_gld_std14.csv", "r+b") as fh:  # a download cut short
        fh.truncate(os.path.getsize(OPENI / "openi_gld_std14.csv") // 2)
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    proc = privrad("--mirror", mirror.as_uri(), cwd=work)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("privrad: error: openi_gld_std14.csv from file://")
    assert "does not match its published sha256" in lines[0] and "nothing was written to data/openi" in lines[0]
    assert list((work / "data").iterdir()) == []  # no folder, no temporary left behind


@needs_openi
def test_a_folder_that_does_not_verify_is_refused_unless_overwritten(privrad, tmp_path):
    out = tmp_path / "openi"
    out.mkdir()
    (out / "indiana_reports.csv").write_text("uid\n")
    proc = privrad("--mirror", OPENI.as_uri(), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2 and "pass --overwrite" in proc.stderr
    assert (out / "indiana_reports.csv").read_text() == "uid\n"
    proc = privrad("--mirror", OPENI.as_uri(), "--out", str(out), "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert all(filecmp.cmp(out / f, OPENI / f, shallow=False) for f in FILES)


def test_an_unreachable_source_is_one_sentence(privrad, tmp_path):
    proc = privrad("--mirror", (tmp_path / "nowhere").as_uri(), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "could not download file://" in proc.stderr
    assert not (tmp_path / "data" / "openi").exists()


def test_the_course_profile_reads_the_fetched_files_and_says_how_to_get_them(tmp_path, monkeypatch):
    from privrad.errors import DataError
    from privrad.profiles import expand, load_profile
    from privrad.study import prepare_data

    profile = load_profile("course")
    (entry,) = profile.datasets
    assert (entry.dataset, entry.data_dir) == ("openi", "data/openi")  # where `privrad data fetch openi` puts them
    points = expand(profile)
    assert sorted((p.config.epsilon is None, p.config.epsilon or 0) for p in points) == [(False, 0.1), (False, 1), (False, 10), (True, 0)]
    assert {p.config.model for p in points} == {"minilm-l6"}
    monkeypatch.chdir(tmp_path)  # no data/openi here
    with pytest.raises(DataError, match=r"download it with `privrad data fetch openi --out data/openi`"):
        prepare_data(profile)
