"""One writer for non-finite figures in JSON files: strings that stay valid JSON and read back."""

import json
import math

from steadylm.jsonsafe import json_safe
from steadylm.monitor.cadence import due


def test_non_finite_floats_become_strings_that_read_back():
    obj = {"a": math.nan, "b": [1.5, math.inf, (-math.inf, 2)], 3: {"c": None, "d": "x"}}
    text = json.dumps(json_safe(obj), allow_nan=False)
    back = json.loads(text)
    assert back == {"a": "nan", "b": [1.5, "inf", ["-inf", 2]], "3": {"c": None, "d": "x"}}
    assert math.isnan(float(back["a"])) and float(back["b"][1]) == math.inf


def test_due():
    assert [s for s in range(7) if due(3, s)] == [0, 3, 6]
    assert not any(due(0, s) for s in range(5))
