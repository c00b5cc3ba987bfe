"""Stop strings: cut before the first occurrence, across pieces, never returned."""

from __future__ import annotations

from realm_ext.serve.generation import StopMatcher


def run(stops, pieces):
    m = StopMatcher(stops)
    out = []
    for p in pieces:
        out.append(m.feed(p))
        if m.hit:
            return "".join(out), True
    out.append(m.flush())
    return "".join(out), False


def test_no_stops_passes_everything():
    assert run([], ["a", "b"]) == ("ab", False)
    assert run([""], ["a", "b"]) == ("ab", False)


def test_stop_in_one_piece_and_across_pieces():
    assert run(["STOP"], ["hello ", "wor", "ldSTOPmore"]) == ("hello world", True)
    assert run(["STOP"], ["hello S", "T", "OP and"]) == ("hello ", True)
    assert run(["\n\n"], ["a\n", "\nb"]) == ("a", True)


def test_held_back_text_is_released_when_it_is_not_a_stop():
    m = StopMatcher(["END"])
    assert m.feed("the E") == "the "
    assert m.feed("N") == ""
    assert m.feed("D?") == "" and m.hit
    m = StopMatcher(["END"])
    assert m.feed("the EN") == "the "
    assert m.feed("X") == "ENX" and not m.hit
    assert m.feed("E") == "" and m.flush() == "E"


def test_the_earliest_of_several_stops():
    assert run(["bb", "a"], ["xxbba"]) == ("xx", True)
    assert run(["ab", "b"], ["xab"]) == ("x", True)
