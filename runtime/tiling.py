"""Exact tiled inference of the three graphs on images of any size.

Tiles have one fixed size (engine- and CUDA-graph-friendly) and overlap; the last
tile of a row / column lies flush with the border. A tile's pixels within
``margin`` of an inner tile edge see that edge's zero padding, so they get zero
weight; the remaining overlap is cross-faded (raised cosine or linear), and the
weights are normalised by their sum. The blend weights are separable: the 2-D
weight of a tile is the outer product of its 1-D row and column weights, and the
sum over the tile grid is the product of the 1-D sums, so normalising each axis
normalises the whole (no full-resolution weight buffer).

The restore graph's SFT layers pool the condition features over the WHOLE image,
so ``run_tiled`` computes ``cond_mean`` once, on aligned chunks of the full map
(the condition net is point-wise per ``size_multiple`` cell), and feeds it to
every restore tile. Tiled output then equals whole-image output up to float
rounding.
"""

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from runtime.device_arrays import array_module
from runtime.errors import BackendError

BLENDS = ("cosine", "linear")
#: Cross-fade width added to the minimum overlap when ``overlap`` is not given.
DEFAULT_BLEND_PX = 16
#: The estimate pass needs less memory per pixel than the restore pass (narrower, no
#: condition features) but a wider overlap (its receptive field), so its tiles are
#: this many times larger by default (see ``runtime/README.md``).
ESTIMATE_TILE_SCALE = 2
#: Largest sample value of the integer image types; float32 samples are in [0, 1].
SAMPLE_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def margin_for(receptive_field: int) -> int:
    """Pixels next to an inner tile edge that differ from the whole-image result.

    The receptive field (``training.model_info``) is the width of input that one
    output cell sees; a pixel needs ``rf / 2`` valid pixels on each side, plus one
    for the pixel's position inside its cell.
    """
    return math.ceil(receptive_field / 2) + 1


def min_overlap(receptive_field: int, multiple: int = 1) -> int:
    """Smallest exact overlap: both tiles drop ``margin`` pixels at the shared edge."""
    return round_up(2 * margin_for(receptive_field), multiple)


def default_overlap(receptive_field: int, multiple: int = 1) -> int:
    """``min_overlap`` plus a ``DEFAULT_BLEND_PX`` cross-fade."""
    return round_up(2 * margin_for(receptive_field) + DEFAULT_BLEND_PX, multiple)


def estimate_tile_for(tile: int, multiple: int = 1, max_side: Optional[int] = None) -> int:
    """Default estimate-pass tile for a restore tile of ``tile``: ``ESTIMATE_TILE_SCALE``
    times larger, aligned to ``multiple``, at most ``max_side`` (an engine profile's)."""
    side = round_up(tile * ESTIMATE_TILE_SCALE, multiple)
    if max_side is not None:
        side = min(side, max_side // multiple * multiple)
    return max(side, tile)


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> List[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``.

    Tiles advance by ``tile - overlap``; the last one ends exactly at ``length``.

    Args:
        length: Image size along the axis (a multiple of ``multiple``).
        tile: Tile size; ``length`` when the image is smaller.
        overlap: Pixels shared by neighbouring tiles.
        multiple: Every start is a multiple of it (the graphs' cell size).

    Raises:
        ValueError: Sizes not multiples of ``multiple``, or ``overlap >= tile``.
    """
    if length % multiple or tile % multiple or overlap % multiple:
        raise ValueError(
            f"length {length}, tile {tile} and overlap {overlap} must be multiples of {multiple}"
        )
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile {tile})")
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def balanced_tile(length: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """Smallest tile size (<= ``tile``) that covers ``length`` with as many tiles as ``tile`` would.

    A fixed tile with the last one flush to the border can waste most of a tile
    (1080 rows in 1024-row tiles compute 2048 rows); shrinking all tiles of the
    axis to share the overlap evenly keeps one tile shape per image (one engine
    shape, one CUDA graph) and computes only ``length + (n - 1) * overlap`` rows.
    """
    if tile >= length:
        return length
    count = math.ceil((length - overlap) / (tile - overlap))
    return min(tile, round_up(math.ceil((length + (count - 1) * overlap) / count), multiple))


def _ramp(width: int, blend: str) -> np.ndarray:
    """Rising weights of ``width`` samples strictly between 0 and 1."""
    t = (np.arange(width, dtype=np.float64) + 0.5) / width
    return t if blend == "linear" else 0.5 - 0.5 * np.cos(np.pi * t)


def axis_weights(
    starts: Sequence[int], tile: int, length: int, margin: int, blend: str = "cosine"
) -> List[np.ndarray]:
    """Normalised 1-D blend weights of each tile along one axis.

    Tile ``k`` and ``k + 1`` are both exact on ``[start_{k+1} + margin, end_k - margin)``;
    the weight cross-fades there, and is 0 within ``margin`` of an inner edge.

    Returns:
        One float32 array of length ``min(tile, length)`` per tile; at each pixel the
        weights of all tiles sum to 1.

    Raises:
        ValueError: Neighbouring tiles share no exact pixel (overlap too small).
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    size = min(tile, length)
    raw = [np.ones(size) for _ in starts]
    for k in range(len(starts) - 1):
        lo = starts[k + 1] + margin
        hi = starts[k] + size - margin
        if hi < lo:
            raise ValueError(
                f"tiles at {starts[k]} and {starts[k + 1]} (size {size}) overlap by "
                f"{starts[k] + size - starts[k + 1]} px, less than the "
                f"{2 * margin} px that exact tiling needs"
            )
        fade = np.zeros(length)
        fade[hi:] = 1.0
        fade[lo:hi] = _ramp(hi - lo, blend)
        raw[k] *= 1.0 - fade[starts[k] : starts[k] + size]
        raw[k + 1] *= fade[starts[k + 1] : starts[k + 1] + size]
    total = np.zeros(length)
    for s, w in zip(starts, raw):
        total[s : s + size] += w
    if np.any(total <= 0):
        raise ValueError("tile weights leave pixels uncovered")
    return [(w / total[s : s + size]).astype(np.float32) for s, w in zip(starts, raw)]


@dataclass(frozen=True)
class TileGrid:
    """Tiles of one pass over a (H, W) image.

    Attributes:
        tile_h, tile_w: Tile size (the image size where it is smaller).
        ys, xs: Tile starts; the grid is their Cartesian product.
        wy, wx: Normalised 1-D weights per row / column of tiles.
    """

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: Tuple[int, ...]
    xs: Tuple[int, ...]
    wy: Tuple[np.ndarray, ...]
    wx: Tuple[np.ndarray, ...]

    def tiles(self) -> List[Tuple[int, int, int, int]]:
        """(row index, column index, y, x) of every tile, row-major."""
        return [(i, j, y, x) for i, y in enumerate(self.ys) for j, x in enumerate(self.xs)]


def make_grid(
    height: int,
    width: int,
    tile: int,
    overlap: int,
    receptive_field: int,
    multiple: int = 1,
    blend: str = "cosine",
) -> TileGrid:
    """Tile grid of one pass.

    Args:
        height, width: Image size, multiples of ``multiple``.
        tile: Tile size (square), a multiple of ``multiple``.
        overlap: Shared pixels, at least ``min_overlap(receptive_field)``.
        receptive_field: Of the graph run on the tiles (manifest ``receptive_field``).
        multiple: The graphs' ``size_multiple``.
        blend: ``cosine`` or ``linear``.

    Raises:
        ValueError: Bad sizes or an overlap below the exact minimum.
    """
    need = min_overlap(receptive_field, multiple)
    if overlap < need and (tile < height or tile < width):
        raise ValueError(
            f"overlap {overlap} is below {need} px, the minimum for exact tiling "
            f"with a receptive field of {receptive_field} px"
        )
    if tile % multiple or tile <= 0:
        raise ValueError(f"tile {tile} must be a positive multiple of {multiple}")
    margin = margin_for(receptive_field)
    th = balanced_tile(height, tile, overlap, multiple)
    tw = balanced_tile(width, tile, overlap, multiple)
    ys = tile_starts(height, th, overlap, multiple)
    xs = tile_starts(width, tw, overlap, multiple)
    return TileGrid(
        height,
        width,
        th,
        tw,
        tuple(ys),
        tuple(xs),
        tuple(axis_weights(ys, th, height, margin, blend)),
        tuple(axis_weights(xs, tw, width, margin, blend)),
    )


def chunk_bounds(length: int, chunk: int, multiple: int) -> List[Tuple[int, int]]:
    """Split ``[0, length)`` into ``ceil(length / chunk)`` near-equal aligned parts.

    Equal parts (instead of a short remainder) keep every part of a ``length`` above
    ``chunk`` at least ``chunk / 2 - multiple`` long (see ``min_condition_chunk``).
    """
    cells = length // multiple
    parts = max(1, math.ceil(length / chunk))
    edges = [round(i * cells / parts) * multiple for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def min_condition_chunk(min_side: int, multiple: int) -> int:
    """Smallest condition chunk whose ``chunk_bounds`` parts all stay >= ``min_side``
    (a TensorRT profile's minimum height / width): ``2 * (min_side + multiple)``."""
    return 2 * (min_side + multiple)


RunGraph = Callable[[str, Dict[str, Any]], Dict[str, Any]]


def _batches(items: List[Any], size: int) -> Iterator[List[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _block(source: Any, batch: List[Tuple[int, int, int, int]], th: int, tw: int, xp: Any) -> Any:
    """(n, th, tw, ...) tiles of ``source`` at the batch's (y, x); one tile is a view, which
    the feeds copy once into the graph's layout."""
    if len(batch) == 1:
        _, _, y, x = batch[0]
        return source[None, y : y + th, x : x + tw]
    return xp.stack([source[y : y + th, x : x + tw] for _, _, y, x in batch])


def _to_float(block: Any, xp: Any) -> Any:
    """(n, h, w, 3) image block in its own dtype -> float32 (n, 3, h, w) in [0, 1]."""
    scale = SAMPLE_MAX.get(np.dtype(block.dtype), 1.0)
    out = xp.ascontiguousarray(block.transpose(0, 3, 1, 2), dtype=xp.float32)
    if scale != 1.0:
        out *= xp.float32(1.0 / scale)
    return out


class TiledPipeline:
    """estimate -> (scale / replace map) -> condition -> restore, tile by tile.

    Args:
        run: ``Backend.run``-like callable ``(graph, inputs) -> outputs``.
        receptive_field: ``{"estimate": px, "restore": px}`` from the manifest.
        multiple: The graphs' ``size_multiple``.
        uses_pooling: Whether ``restore`` takes ``cond_mean``.
        tile: Tile size of the restore pass. Default: 512.
        overlap: Shared pixels for both passes; None: ``default_overlap`` of each.
        tile_batch: Tiles per graph call. Default: 4.
        blend: ``cosine`` or ``linear``. Default: ``cosine``.
        progress: Called with the number of tiles finished, or None.
        estimate_tile: Tile size of the estimate pass; None: ``tile``.
        condition_chunk: Side of the map chunks the condition graph pools over (split
            evenly by ``chunk_bounds``); None: ``tile``.

    Raises:
        BackendError: A tile that is not a positive multiple of ``multiple``, an overlap
            below ``min_overlap`` of a pass or not below its tile, a tile batch below 1.
            The one check of tile and overlap (messages name the command-line options).
    """

    def __init__(
        self,
        run: RunGraph,
        receptive_field: Dict[str, int],
        multiple: int,
        uses_pooling: bool,
        tile: int = 512,
        overlap: Optional[int] = None,
        tile_batch: int = 4,
        blend: str = "cosine",
        progress: Optional[Callable[[int], None]] = None,
        estimate_tile: Optional[int] = None,
        condition_chunk: Optional[int] = None,
    ):
        self.run = run
        self.rf = receptive_field
        self.multiple = multiple
        self.uses_pooling = uses_pooling
        self.tiles = {"estimate": estimate_tile or tile, "restore": tile}
        self.condition_chunk = condition_chunk or tile
        self.overlap = overlap
        self.tile_batch = tile_batch
        self.blend = blend
        self.progress = progress
        self._check()

    def _check(self) -> None:
        if self.tile_batch < 1:
            raise BackendError(f"--tile-batch must be >= 1, got {self.tile_batch}")
        tile, m = self.tiles["restore"], self.multiple
        for side in (tile, self.tiles["estimate"], self.condition_chunk):
            if side <= 0 or side % m:
                raise BackendError(f"--tile {side} must be a positive multiple of {m}")
        for graph in ("estimate", "restore"):
            used, need = self.overlap_for(graph), min_overlap(self.rf[graph], m)
            if used < need:
                raise BackendError(
                    f"--overlap {used} is below {need} px, the minimum for exact "
                    f"tiling of {graph!r} (receptive field {self.rf[graph]} px)"
                )
            if used >= self.tiles[graph]:
                sides = "" if self.tiles[graph] == tile else f" ({graph} tiles: {self.tiles[graph]} px)"
                raise BackendError(f"--tile {tile}{sides} must exceed the {graph!r} overlap of {used} px")

    def overlap_for(self, graph: str) -> int:
        if self.overlap is not None:
            return round_up(self.overlap, self.multiple)
        return default_overlap(self.rf[graph], self.multiple)

    def grid(self, graph: str, height: int, width: int) -> TileGrid:
        return make_grid(
            height,
            width,
            self.tiles[graph],
            self.overlap_for(graph),
            self.rf[graph],
            self.multiple,
            self.blend,
        )

    def estimate(self, image: Any) -> Any:
        """(H, W, 3) image (uint8 / uint16 / float32) -> float32 map (H, W)."""
        xp = array_module(image)
        height, width = image.shape[:2]
        out = xp.zeros((height, width), dtype=xp.float32)
        self._tiled(
            "estimate", [image], out, lambda tiles, _: {"image": _to_float(tiles[0], xp)}, "defocus_map", xp
        )
        return out

    def condition_mean(self, defocus_map: Any) -> Any:
        """float32 map (H, W) -> (1, Cc): the pixel-weighted mean over aligned chunks."""
        total, weight = None, 0
        side = self.condition_chunk
        for y0, y1 in chunk_bounds(defocus_map.shape[0], side, self.multiple):
            for x0, x1 in chunk_bounds(defocus_map.shape[1], side, self.multiple):
                chunk = defocus_map[None, None, y0:y1, x0:x1]
                mean = self.run("condition", {"defocus_map": chunk})["cond_mean"]
                pixels = (y1 - y0) * (x1 - x0)
                total = mean * pixels if total is None else total + mean * pixels
                weight += pixels
        assert total is not None, "chunk_bounds yields at least one chunk"
        return total / weight

    def restore(self, image: Any, defocus_map: Any, cond_mean: Optional[Any]) -> Any:
        """(H, W, 3) image, float32 map (H, W)[, (1, Cc)] -> float32 (3, H, W)."""
        xp = array_module(image)
        height, width = image.shape[:2]
        out = xp.zeros((3, height, width), dtype=xp.float32)

        def feeds(tiles: List[Any], n: int) -> Dict[str, Any]:
            inputs = {
                "image": _to_float(tiles[0], xp),
                "defocus_map": xp.ascontiguousarray(tiles[1][:, None], dtype=xp.float32),
            }
            if cond_mean is not None:
                inputs["cond_mean"] = xp.ascontiguousarray(xp.repeat(cond_mean, n, axis=0))
            return inputs

        self._tiled("restore", [image, defocus_map], out, feeds, "deblurred", xp)
        return out

    def _tiled(
        self,
        graph: str,
        sources: List[Any],
        out: Any,
        feeds: Callable[[List[Any], int], Dict[str, Any]],
        output: str,
        xp: Any,
    ) -> None:
        """Run ``graph`` over the tiles of ``sources`` and blend into ``out`` (.., H, W)."""
        grid = self.grid(graph, *sources[0].shape[:2])
        th, tw = grid.tile_h, grid.tile_w
        for batch in _batches(grid.tiles(), self.tile_batch):
            blocks = [_block(s, batch, th, tw, xp) for s in sources]
            result = self.run(graph, feeds(blocks, len(batch)))[output]
            for k, (i, j, y, x) in enumerate(batch):
                region = out[..., y : y + th, x : x + tw]
                tile = result[k].reshape(region.shape)
                # Separable weights, applied in place: no (th, tw) weight or product buffer.
                # The output is the caller's until the backend's next run.
                tile *= xp.asarray(grid.wx[j])
                tile *= xp.asarray(grid.wy[i])[:, None]
                region += tile
            if self.progress is not None:
                self.progress(len(batch))

    def count_tiles(self, height: int, width: int, estimate: bool = True) -> int:
        """Tiles of the restore pass and, with ``estimate``, the estimate pass: for a progress bar."""
        passes = ("estimate", "restore") if estimate else ("restore",)
        return sum(len(self.grid(g, height, width).tiles()) for g in passes)


def pad_to(image: Any, height: int, width: int) -> Any:
    """Pad (H, W, ...) at the bottom / right to (height, width): reflect, or edge when
    the image is too small to reflect."""
    dh, dw = height - image.shape[0], width - image.shape[1]
    if dh == 0 and dw == 0:
        return image
    xp = array_module(image)
    pads = [(0, dh), (0, dw)] + [(0, 0)] * (image.ndim - 2)
    mode = "reflect" if dh < image.shape[0] and dw < image.shape[1] else "edge"
    return xp.pad(image, pads, mode=mode)


def padded_size(height: int, width: int, multiple: int, minimum: Tuple[int, int] = (1, 1)) -> Tuple[int, int]:
    """Smallest (H', W') >= (height, width) and >= ``minimum``, multiples of ``multiple``."""
    return (round_up(max(height, minimum[0]), multiple), round_up(max(width, minimum[1]), multiple))
