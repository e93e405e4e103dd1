"""Plain product runs are converted lazily (``LazyProducts``); everything else line by line.

Both paths must give the same audit, warnings included: each test parses the text as it is, and
again with ``_SUSPECT`` replaced by a pattern that matches everything, which sends every run
down the general path.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.evadts import parser
from protocols.evadts.parser import LazyProducts, parse_all
from protocols.evadts.records import Audit
from tests.corpus import DEX
from tests.samples import AUDIT

HEAD = "DXS*T0123456789*VA*V0/6*1\r\nST*001*0001\r\nID1*SERIAL*MODEL*1\r\n"
TAIL = "VA1*100*1*100*1\r\nSE*9*0001\r\nDXE*1*1\r\n"


def _both(data: bytes | str, monkeypatch: pytest.MonkeyPatch) -> tuple[Audit, ...]:
    """``parse_all`` of ``data`` by the lazy path; asserts the general path gives the same."""
    lazy = parse_all(data)
    with monkeypatch.context() as patched:
        patched.setattr(parser, "_SUSPECT", re.compile(""))
        general = parse_all(data)
    assert all(not isinstance(audit.products, LazyProducts) for audit in general)
    assert lazy == general
    for fast, slow in zip(lazy, general, strict=True):
        assert fast.warnings == slow.warnings
        assert tuple(fast.products) == tuple(slow.products)
        assert fast.to_json() == slow.to_json()
    return lazy


@pytest.mark.parametrize("path", DEX.params())
def test_lazy_products_equal_the_general_path_on_every_corpus_file(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _both(path.read_bytes(), monkeypatch)


def test_a_plain_audit_takes_the_lazy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    (audit,) = _both(AUDIT, monkeypatch)
    assert isinstance(audit.products, LazyProducts)
    assert len(audit.products) > 0


@pytest.mark.parametrize(
    "product_lines",
    [
        ["PA1*1*-1*X", "PA2*1*2*3*4"],  # a negative price
        ["PA1**1*150", "PA2*1*2*3*4"],  # the KIKKO shift
        ["PA1*  *150", "PA2*1*2*3*4"],  # a selection of spaces
        ["PA1", "PA2*1*2*3*4"],  # a PA1 with no elements
        ["PA2*1*2*3*4", "PA1*1*150"],  # an orphan PA2
        ["PA1*1*150", "PA2*1*x*3*4"],  # a letter in a counter
        ["PA1*1*150", "PA2*1*2*3*4", "PA7*1*CA*1*150*1* 2*3*4"],  # a space in a PA7 counter
        ["PA1*1*150", "PA2*1*" + "9" * 5000 + "*3*4"],  # beyond int()'s digits
        ["PA1*1*150", "PA2*1*" + "9" * 19 + "*3*4"],  # 19 digits: the general path
        ["PA1*1*150^2A^", "PA2*1*2*3*4"],  # an escape in the price
    ],
)
def test_suspect_products_take_the_general_path_with_the_same_result(
    product_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = HEAD + "".join(line + "\r\n" for line in product_lines) + TAIL
    (audit,) = _both(text, monkeypatch)
    assert not isinstance(audit.products, LazyProducts)


def test_lazy_products_behave_as_a_tuple(monkeypatch: pytest.MonkeyPatch) -> None:
    (audit,) = _both(AUDIT, monkeypatch)
    products = audit.products
    assert isinstance(products, LazyProducts)
    eager = tuple(products)
    assert products[0] == eager[0]
    assert products[-1] == eager[-1]
    assert products[1:3] == eager[1:3]
    assert products == eager
    assert eager == products
    assert hash(products) == hash(eager)
    assert repr(products) == repr(eager)
    assert pickle.loads(pickle.dumps(audit)) == audit
    assert products.index(eager[2]) == 2
    assert eager[2] in products


_ELEMENT = st.one_of(
    st.from_regex(r"[0-9]{0,6}", fullmatch=True),
    st.sampled_from(
        ["-1", "4294967295", "4294967296", " 5", "", "0", "x", "^2A^", "18446744073709551616"]
    ),
)
_TAG = st.sampled_from(["PA1", "PA2", "PA3", "PA4", "PA5", "PA7", "PA8", "PA9", "LS", "LE", "MA5"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_TAG, st.lists(_ELEMENT, max_size=9)), max_size=40))
def test_lazy_and_general_paths_agree_on_any_product_lines(
    lines: list[tuple[str, list[str]]],
) -> None:
    body = "".join("*".join([tag, *elements]) + "\r\n" for tag, elements in lines)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _both(HEAD + body + TAIL, monkeypatch)
        _both(HEAD + body, monkeypatch)  # truncated after the products


def test_a_dxs_inside_a_run_of_product_lines_starts_the_next_audit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by fuzzing: a PA line whose text runs into a DXS (a carrier's envelope) ends its
    audit there (its text before the DXS is dropped); the lazy path had read that line as one
    more product."""
    second = "PA1*2*75*NAME>" + HEAD + "PA1*3*50\r\nPA2*1*2*3*4\r\n" + TAIL
    first, later = _both(HEAD + "PA1*1*150\r\nPA2*1*2*3*4\r\n" + second, monkeypatch)
    assert [p.selection for p in first.products] == ["1"]  # the DXS line is the next audit's
    assert [p.selection for p in later.products] == ["3"]


def test_product_lines_right_after_a_dxs_inside_a_run_belong_to_the_new_audit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by fuzzing: the run that holds the new audit's DXS line goes on into that audit;
    its products there must not be lost when a later run of the audit is plain."""
    dxs = "DXS*T9*VA*V0/6*1\r\n"
    text = HEAD + "PA1*1*150\r\nPA1*2*75*N^" + dxs + "PA1*3*50\r\nID4*2\r\nPA1*4*60\r\n" + TAIL
    first, later = _both(text, monkeypatch)
    assert [p.selection for p in first.products] == ["1"]
    assert [p.selection for p in later.products] == ["3", "4"]
