"""`kvprof methods`: the 33 methods listed, one method described with its parameters."""
from __future__ import annotations

import json

from kvprof.cli import main


def test_methods_lists_all_33(capsys):
    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 33 and rows[0]["name"] == "bf16" and rows[14]["name"] == "prq_int4"
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "flowcache_native_soft_prune_int4" in text and "prq_int4" in text


def test_method_detail_shows_parameters_and_defaults(capsys):
    assert main(["methods", "flowcache_prune_int2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"]["rho_ret"]["default"] == 0.30 and info["params"]["rho_imp"]["default"] == 0.1
    assert main(["methods", "prq_in4"]) == 2
    assert "did you mean 'prq_int4'" in capsys.readouterr().err
