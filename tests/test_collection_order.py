"""tests/conftest.py's collection order: files with the most ``slow`` tests first, whole files kept together."""

import pathlib
from dataclasses import dataclass

from tests.conftest import pytest_collection_modifyitems


@dataclass
class FakeItem:
    path: pathlib.Path
    name: str
    slow: bool = False

    def get_closest_marker(self, name: str):
        return object() if name == "slow" and self.slow else None


def test_files_with_more_slow_tests_come_first_and_stay_whole():
    a, b, c = (pathlib.Path(f"tests/test_{x}.py") for x in "abc")
    items = [
        FakeItem(a, "a1"),
        FakeItem(a, "a2", slow=True),
        FakeItem(b, "b1"),
        FakeItem(c, "c1", slow=True),
        FakeItem(c, "c2"),
        FakeItem(c, "c3", slow=True),
    ]
    pytest_collection_modifyitems(items)
    assert [item.name for item in items] == ["c1", "c2", "c3", "a1", "a2", "b1"]
