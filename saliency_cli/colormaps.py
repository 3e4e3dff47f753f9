"""The colormaps, as 256-entry uint8 lookup tables (no matplotlib at run
time): jet, gray and the diverging bwr computed here, the others from
matplotlib's tables (colormap_data.py)."""

from __future__ import annotations

import numpy as np

from .colormap_data import TABLES


def _jet() -> np.ndarray:
    v = np.linspace(0.0, 1.0, 256)[:, None]
    centres = np.array([[3.0, 2.0, 1.0]])  # red, green, blue peaks of MATLAB's jet
    return np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)


def _gray() -> np.ndarray:
    return np.repeat(np.linspace(0.0, 1.0, 256)[:, None], 3, axis=1)


def _bwr() -> np.ndarray:
    """Blue - white - red: the diverging map for signed attributions (0 is white)."""
    v = np.linspace(0.0, 1.0, 256)
    return np.stack([np.minimum(1, 2 * v), 1 - np.abs(2 * v - 1), np.minimum(1, 2 * (1 - v))], axis=1)


def _from_hex(text: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(text), dtype=np.uint8).reshape(256, 3)


COLORMAPS: dict[str, np.ndarray] = {
    name: np.round(fn() * 255).astype(np.uint8) for name, fn in (("jet", _jet), ("gray", _gray), ("bwr", _bwr))
}
COLORMAPS.update({name: _from_hex(text) for name, text in TABLES.items()})
DIVERGING = "bwr"  # used automatically for signed maps
