"""What a reader of a bad JSON file is told: the problem in words, never the names of
edgeprune's classes or Python's exceptions, and one line for every reader (the loss too)."""

from __future__ import annotations

import re

import pytest

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.schema import Strict, load_json, validate
from edgeprune.training.loss import LatencyAwareSparsityLoss


class _Inner(Strict):
    a: int


class _Outer(Strict):
    inner: _Inner
    rows: list[_Inner]


@pytest.mark.parametrize(
    ("data", "field"),
    [({"inner": 3, "rows": []}, "inner"), ({"inner": {"a": 1}, "rows": [5]}, "rows[0]")],
)
def test_a_nested_object_of_the_wrong_type_names_no_class(data, field):
    with pytest.raises(EdgepruneError) as e:
        validate(_Outer, data, "f.json is not a valid thing")
    msg = str(e.value)
    assert msg.startswith(f"f.json is not a valid thing: {field}: should be an object")
    assert "_Inner" not in msg and "instance" not in msg


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": [1, -Infinity]}', "-Infinity is not a JSON number"),
        (b'{"a": 1', "line 1, column 8"),
        (b"[" * 100_000, "nested too deeply"),
        (b"\n\n  {]", "line 3, column 4"),
    ],
)
def test_not_json_says_why_in_words(tmp_path, text, says):
    f = tmp_path / "t.json"
    f.write_bytes(text)
    with pytest.raises(EdgepruneError) as e:
        load_json(f, "t.json is not a valid table")
    msg = str(e.value)
    assert msg.startswith("t.json is not a valid table: not JSON: ") and says in msg
    assert "\n" not in msg and not re.search(r"\b\w*(Error|Exception)\b", msg)


@pytest.mark.parametrize("text", [b"[" * 100_000, b'{"schema": NaN}', b"\xff\xfe\x00"])
def test_the_loss_reads_its_file_as_every_reader_does(tmp_path, text):
    """The loss opened a profile or budget with plain json.loads: a deeply nested file was
    a RecursionError and a NaN literal was read."""
    f = tmp_path / "p.json"
    f.write_bytes(text)
    with pytest.raises(EdgepruneError, match="not JSON"):
        LatencyAwareSparsityLoss(f, target_ms=5.0)
