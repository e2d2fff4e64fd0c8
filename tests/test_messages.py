"""User-facing output: privrad's warnings are one sentence, without Python's source line."""

from __future__ import annotations

import subprocess
import sys


def test_a_privrad_warning_prints_one_line_without_source():
    code = ("import warnings, privrad\n"
            "from privrad.data import DataWarning\n"
            "warnings.warn('openi: 3826 reports; 25 reports with empty text after sectioning.', DataWarning)\n"
            "warnings.warn('a warning of another library', UserWarning)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.splitlines()
    assert lines[0] == "privrad: openi: 3826 reports; 25 reports with empty text after sectioning."
    assert "UserWarning: a warning of another library" in lines[1]  # other warnings are left as Python shows them
