"""The token fields' dictionary encoder against pyarrow's own."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvtrace.ingest import tokens


def reference(chunk: pa.Array) -> pa.DictionaryArray:
    return pc.dictionary_encode(chunk.cast(pa.string()))


def test_tokens_short_and_long_get_codes_in_order_of_first_appearance():
    values = [b"A", b"pv", b"-", b"pv", b"pmap_enter", b"A", b"pmap_enter_quick_locked",
              b"pmap_enter_quick_lockeX", b"", b"pmap_enter", b""]
    encoded = tokens.encode(pa.array(values, pa.binary()))
    assert encoded.dictionary.to_pylist() == ["A", "pv", "-", "pmap_enter",
                                              "pmap_enter_quick_locked",
                                              "pmap_enter_quick_lockeX", ""]
    assert encoded.indices.to_pylist() == [0, 1, 2, 1, 3, 0, 4, 5, 6, 3, 6]


def test_tokens_that_differ_only_between_their_first_and_last_eight_bytes_differ():
    """A token over 16 bytes is compared in full, not only by its end words."""
    a, b = b"12345678_middle_A_87654321", b"12345678_middle_B_87654321"
    assert tokens.encode(pa.array([a, b, a], pa.binary())).indices.to_pylist() == [0, 1, 0]


def test_more_distinct_values_than_the_table_holds_are_encoded_by_pyarrow():
    chunk = pa.array([str(i).encode() for i in range(tokens.MAX_DISTINCT + 5)], pa.binary())
    assert tokens.encode(chunk).equals(reference(chunk))


def test_a_token_that_is_not_utf8_fails_as_pyarrow_would():
    with pytest.raises(pa.ArrowInvalid):
        tokens.encode(pa.array([b"pv", b"p\xffv"], pa.binary()))


_TOKEN = st.one_of(
    st.sampled_from([b"", b"A", b"pv", b"pvc", b"pmap", b"4k", b"2m", b"-", b"pmap_enter",
                     b"pmap_enter_quick_locked", b"pmap_enter_quick_lockeX"]),
    st.binary(max_size=40).filter(lambda b: b.isascii()),
    st.text(max_size=12).map(str.encode))


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(values=st.lists(_TOKEN, max_size=60), start=st.integers(0, 5))
def test_property_the_encoder_gives_pyarrows_dictionary_and_codes(values, start):
    """Any tokens, from any offset into their array (the reader's chunks start at 0, a
    sliced array does not)."""
    chunk = pa.array(values, pa.binary()).slice(min(start, len(values)))
    got, want = tokens.encode(chunk), reference(chunk)
    assert got.dictionary.equals(want.dictionary)
    assert got.indices.equals(want.indices)
