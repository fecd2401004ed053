"""Layer maps: terminal, nearest, explicit."""
import pytest

from lcf.align.layers import ExplicitLayerMap, NearestLayerMap, TerminalLayerMap
from lcf.errors import AlignmentError


def test_terminal_aligns_last_layers_and_clamps():
    m = TerminalLayerMap()(sharer_layers=30, receiver_layers=18)
    assert m.to_list() == list(range(12, 30))
    m = TerminalLayerMap()(sharer_layers=18, receiver_layers=30)
    assert m.to_list()[:13] == [0] * 13 and m.to_list()[-1] == 17
    m = TerminalLayerMap(drop_clamped=True)(sharer_layers=18, receiver_layers=30)
    assert m.to_list()[:12] == [None] * 12 and m.fused == list(range(12, 30))


def test_nearest_maps_relative_depth():
    m = NearestLayerMap()(sharer_layers=18, receiver_layers=30)
    lst = m.to_list()
    assert lst[0] == 0 and lst[-1] == 17 and lst == sorted(lst) and len(lst) == 30
    assert NearestLayerMap()(sharer_layers=4, receiver_layers=4).to_list() == [0, 1, 2, 3]
    assert NearestLayerMap()(sharer_layers=5, receiver_layers=1).to_list() == [4]


def test_explicit_map_and_errors():
    m = ExplicitLayerMap([None, 0, 2])(sharer_layers=3, receiver_layers=3)
    assert m.pairs() == [(1, 0), (2, 2)] and "R1<-S0" in str(m)
    with pytest.raises(AlignmentError, match="has 2 entries but the receiver has 3"):
        ExplicitLayerMap([0, 1])(sharer_layers=3, receiver_layers=3)
    with pytest.raises(AlignmentError, match="reads sharer layer 5.*0..2"):
        ExplicitLayerMap([0, 1, 5])(sharer_layers=3, receiver_layers=3)
