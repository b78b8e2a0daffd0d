"""The method table (``fastkd list methods`` and the README): every registered method has its paper and its
peers, and the README's table is exactly what the command prints, so neither goes stale."""
from __future__ import annotations

import os
import re

from fastkd.cli import main
from fastkd.methods import METHODS
from fastkd.methods.base import PEERS
from fastkd.methods.catalogue import NOT_YET

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_every_method_names_its_paper_and_peers():
    for name, cls in METHODS.items():
        assert cls.paper and re.search(r"(19|20)\d\d|no teacher", cls.paper), name
        assert set(cls.peers) <= set(PEERS), name
    assert not {n for n, _, _ in NOT_YET} & set(METHODS.names())  # a method fastkd has is not listed as missing


def test_readme_table_is_what_list_methods_prints(capsys):
    main(["list", "methods", "--markdown"])
    table = capsys.readouterr().out.strip()
    text = open(README).read()
    start, end = text.index("<!-- methods-table -->") + len("<!-- methods-table -->"), text.index("<!-- /methods-table -->")
    assert text[start:end].strip() == table, "README's method table is stale: paste `fastkd list methods --markdown`"
    assert all(f"| {name} " in table for name in METHODS.names())
