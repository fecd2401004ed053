"""Layer maps: which sharer layer feeds each receiver layer.

Each registered layer-map component is called with the two depths and returns a :class:`LayerMap`:

    terminal  receiver layer t reads sharer layer t + (S - T) (last layers aligned), clamped at 0
              — the C2C default (arXiv 2510.03215); ``drop_clamped`` leaves the clamped ones unfused
    nearest   both depths mapped to [0, 1]; each receiver layer reads the closest sharer layer
    explicit  a list with one entry per receiver layer: a sharer layer index, or null for no fusion
"""
from __future__ import annotations

from dataclasses import dataclass

from lcf.errors import AlignmentError
from lcf.registry import layer_maps


@dataclass(frozen=True)
class LayerMap:
    """``sharer_of[t]`` is the sharer layer that feeds receiver layer ``t``, or None (no fusion)."""

    sharer_of: tuple[int | None, ...]
    sharer_layers: int

    def __post_init__(self):
        for t, s in enumerate(self.sharer_of):
            if s is not None and not (0 <= s < self.sharer_layers):
                raise AlignmentError(
                    f"layer map: receiver layer {t} reads sharer layer {s}, but the sharer has layers "
                    f"0..{self.sharer_layers - 1}"
                )

    @property
    def receiver_layers(self) -> int:
        return len(self.sharer_of)

    @property
    def fused(self) -> list[int]:
        """Receiver layers that receive a sharer layer."""
        return [t for t, s in enumerate(self.sharer_of) if s is not None]

    def pairs(self) -> list[tuple[int, int]]:
        """(receiver layer, sharer layer) for every fused receiver layer."""
        return [(t, s) for t, s in enumerate(self.sharer_of) if s is not None]

    def to_list(self) -> list[int | None]:
        return list(self.sharer_of)

    def __str__(self) -> str:
        return ", ".join(f"R{t}<-S{s}" for t, s in self.pairs()) or "(no fused layers)"


def _check_depths(sharer_layers: int, receiver_layers: int) -> None:
    if sharer_layers < 1 or receiver_layers < 1:
        raise AlignmentError(f"layer map needs positive depths, got sharer={sharer_layers}, receiver={receiver_layers}")


@layer_maps.register("terminal")
class TerminalLayerMap:
    """Align the last layers: receiver t <- sharer t + (S - T), clamped at 0."""

    def __init__(self, drop_clamped: bool = False):
        self.drop_clamped = drop_clamped

    def __call__(self, sharer_layers: int, receiver_layers: int) -> LayerMap:
        _check_depths(sharer_layers, receiver_layers)
        shift = sharer_layers - receiver_layers
        out = []
        for t in range(receiver_layers):
            s = t + shift
            out.append(None if s < 0 and self.drop_clamped else max(s, 0))
        return LayerMap(tuple(out), sharer_layers)


@layer_maps.register("nearest")
class NearestLayerMap:
    """Relative depth: receiver t <- round(t * (S - 1) / (T - 1))."""

    def __call__(self, sharer_layers: int, receiver_layers: int) -> LayerMap:
        _check_depths(sharer_layers, receiver_layers)
        if receiver_layers == 1:
            return LayerMap((sharer_layers - 1,), sharer_layers)
        scale = (sharer_layers - 1) / (receiver_layers - 1)
        # round half up, so the result does not depend on banker's rounding
        return LayerMap(tuple(int(t * scale + 0.5) for t in range(receiver_layers)), sharer_layers)


@layer_maps.register("explicit")
class ExplicitLayerMap:
    """One entry per receiver layer: the sharer layer index, or null (no fusion)."""

    def __init__(self, sharer_layers: list[int | None]):
        if not isinstance(sharer_layers, (list, tuple)) or not sharer_layers:
            raise AlignmentError("explicit layer map: `sharer_layers` must be a non-empty list (one entry per receiver layer)")
        self.sharer_layers = [None if s is None else int(s) for s in sharer_layers]

    def __call__(self, sharer_layers: int, receiver_layers: int) -> LayerMap:
        _check_depths(sharer_layers, receiver_layers)
        if len(self.sharer_layers) != receiver_layers:
            raise AlignmentError(
                f"explicit layer map has {len(self.sharer_layers)} entries but the receiver has "
                f"{receiver_layers} layers; give one entry (sharer index or null) per receiver layer"
            )
        return LayerMap(tuple(self.sharer_layers), sharer_layers)
