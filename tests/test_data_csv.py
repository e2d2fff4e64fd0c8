"""CSV adapter: a team's own reports as CSV or parquet, named columns, validated values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privrad.data import load_dataset
from privrad.data.common import DataWarning
from privrad.errors import ConfigError, DataError

ROWS = pd.DataFrame(
    {
        "report_id": ["r1", "r2", "r3", "r4", "r5"],
        "mrn": ["a", "a", "b", "c", "d"],
        "report": ["Small left effusion.", "No effusion.\n  Heart normal.", "Possible effusion.", "Cardiomegaly.", "   "],
        "fold": ["train", "train", "validate", "test", "test"],
        "effusion": ["1", "0", "-1", "", "0"],
        "cardiomegaly": ["0", "0", "0", "1", "0"],
    }
)


def write(tmp_path: Path, df=ROWS, name="reports.csv") -> Path:
    p = tmp_path / name
    if name.endswith(".parquet"):
        df.to_parquet(p)
    else:
        df.to_csv(p, index=False)
    return p


OPTS = dict(text_column="report", id_column="report_id", patient_column="mrn", split_column="fold")


@pytest.mark.parametrize("name", ["reports.csv", "reports.csv.gz", "reports.parquet"])
def test_csv_and_parquet(tmp_path, name):
    p = write(tmp_path, name=name)
    with pytest.warns(DataWarning, match="1 reports with empty text"):
        ds = load_dataset("csv", p, **OPTS)
    assert ds.credentialed is True  # the safe default
    assert ds.label_names == ("effusion", "cardiomegaly")  # every remaining column, in file order
    assert ds.ids == ("r1", "r2", "r3", "r4") and ds.patient_ids == ("a", "a", "b", "c")
    assert ds.texts[1] == "No effusion. Heart normal."
    assert list(ds.splits) == ["train", "train", "validation", "test"]
    np.testing.assert_array_equal(ds.labels, [[1, 0], [0, 0], [0, 0], [0, 1]])
    np.testing.assert_array_equal(ds.label_mask, [[True, True], [True, True], [False, True], [True, True]])


def test_options_label_columns_policy_public_and_default_split(tmp_path):
    p = write(tmp_path)
    with pytest.warns(DataWarning):
        ds = load_dataset("csv", p, text_column="report", label_columns="cardiomegaly,effusion", uncertain="positive",
                          credentialed=False, patient_column="mrn", seed=2)
    assert ds.label_names == ("cardiomegaly", "effusion") and not ds.credentialed
    assert ds.ids == ("row0", "row1", "row2", "row3")
    assert ds.labels[2, 1] == 1 and ds.label_mask.all()
    assert ds.splits[0] == ds.splits[1]  # same patient, same split
    assert ds.provenance["source"] == "user-file"


def _expect(tmp_path, exc, pattern, df=ROWS, **options):
    p = write(tmp_path, df)
    before = sorted((q.name, q.stat().st_mtime_ns) for q in tmp_path.iterdir())
    with pytest.raises(exc, match=pattern):
        load_dataset("csv", p, **{**OPTS, **options})
    assert sorted((q.name, q.stat().st_mtime_ns) for q in tmp_path.iterdir()) == before


def test_bad_inputs(tmp_path):
    _expect(tmp_path, DataError, r"file .*reports.csv' has no column 'text' \(it has: report_id, mrn, report", text_column="text")
    _expect(tmp_path, DataError, r"has no column 'effusions'", label_columns=["effusions"])
    _expect(tmp_path, DataError, r"column 'effusion' has the value '2' in data row 1; allowed values are 1, 0, -1 or blank",
            df=ROWS.assign(effusion=["2", "0", "0", "0", "0"]))
    _expect(tmp_path, DataError, r"column 'report_id' has the id 'r1' in two rows; ids must be unique",
            df=ROWS.assign(report_id=["r1", "r1", "r3", "r4", "r5"]))
    _expect(tmp_path, DataError, r"column 'fold' has the value 'dev' in data row 2; allowed values are train, validation, test",
            df=ROWS.assign(fold=["train", "dev", "test", "test", "test"]))
    _expect(tmp_path, DataError, r"patient 'a' is in both the 'train' and 'test' splits",
            df=ROWS.assign(fold=["train", "test", "test", "test", "test"]))
    _expect(tmp_path, ConfigError, r"credentialed must be true or false", credentialed="no")
    with pytest.raises(DataError, match=r"CSV adapter file .*missing.csv' is missing"):
        load_dataset("csv", tmp_path / "missing.csv")


def test_not_utf8(tmp_path):
    p = tmp_path / "r.csv"
    p.write_bytes(b"text,a\n\"caf\xe9\",1\n")
    with pytest.raises(DataError, match=r"file .*r.csv' is not UTF-8 text \(bad byte at offset"):
        load_dataset("csv", p)
    assert [q.name for q in tmp_path.iterdir()] == ["r.csv"]


def test_numeric_parquet_columns(tmp_path):
    df = pd.DataFrame({"text": ["a b", "c d", "e"], "x": [1.0, 0.0, np.nan], "y": np.array([0, 1, -1], dtype=np.int64)})
    p = write(tmp_path, df, name="r.parquet")
    ds = load_dataset("csv", p, uncertain="negative", split_fractions=(1, 0, 0))
    np.testing.assert_array_equal(ds.labels, [[1, 0], [0, 1], [0, 0]])
