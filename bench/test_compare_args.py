"""bench/compare.py's own arguments: --sizes reads what people type."""

from __future__ import annotations

import argparse

import pytest

import compare


def test_sizes_take_units():
    assert compare.parse_sizes("64,1KiB, 1MiB,64mib,1GiB") == [64, 1024, 1 << 20, 64 << 20, 1 << 30]
    assert compare.parse_sizes("100b") == [100]


@pytest.mark.parametrize("text", ["", ",", "1KB", "1k", "0", "-1KiB", "KiB", "1.5MiB"])
def test_sizes_refuse_what_is_not_a_size(text):
    with pytest.raises(argparse.ArgumentTypeError):
        compare.parse_sizes(text)
