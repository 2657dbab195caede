"""Reader for the technology part of a LEF file (layers, fixed vias).

Only what a geometric phantom needs is kept: the routing layers (direction,
default wire width, metal thickness and height above the substrate), the cut
(via) layers in stack order, and the geometry of every via defined in the file
(fixed ``VIA name ... LAYER x ; RECT ... ; END name`` blocks and ``VIARULE``
generated vias inside a ``VIA`` block). All lengths are in micrometres, as in
LEF. Everything else (spacing tables, sites, macros, ...) is skipped.

The tokenizer and the error convention (``LayoutError("<file>:<line>: ...")``)
are shared with :mod:`hpc_adept.phantom.defparse`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpc_adept.errors import DataError

Rect = tuple[float, float, float, float]
"""An axis-aligned rectangle ``(x0, y0, x1, y1)`` with ``x0 <= x1``, ``y0 <= y1``."""

_TOKEN_RE = re.compile(r'"[^"]*"|\S+')

# LEF blocks that run until "END <name>" where <name> is the next token.
_NAMED_BLOCKS = frozenset({"LAYER", "VIA", "VIARULE", "SITE", "MACRO", "NONDEFAULTRULE", "ARRAY"})
# LEF blocks that run until "END <keyword>".
_KEYWORD_BLOCKS = frozenset(
    {
        "UNITS",
        "SPACING",
        "PROPERTYDEFINITIONS",
        "IRDROP",
        "NOISETABLE",
        "CORRECTIONTABLE",
    }
)


# --------------------------------------------------------------------------------------
# token stream
# --------------------------------------------------------------------------------------


class LayoutError(DataError, ValueError):
    """A malformed or unreadable DEF/LEF file: ``"<file>:<line>: <what is wrong>"``.

    A :class:`~hpc_adept.errors.DataError`, so the command line reports it as one line
    with exit code 2; also a ``ValueError`` for callers of the parsers that catch those.
    """


class TokenStream:
    """Whitespace-separated tokens of a LEF/DEF file with their line numbers.

    ``#`` starts a comment up to the end of the line when it begins a token;
    double-quoted strings are single tokens (quotes kept).

    Parameters
    ----------
    path : str or Path
        File to read (text).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        tokens: list[str] = []
        lines: list[int] = []
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise LayoutError(f"{self.path}: cannot read file: {exc.strerror}") from None
        for line_no, line in enumerate(text.splitlines(), start=1):
            for match in _TOKEN_RE.finditer(line):
                tok = match.group(0)
                if tok.startswith("#"):
                    break
                tokens.append(tok)
                lines.append(line_no)
        self.tokens = tokens
        self.lines = lines
        self.pos = 0
        self._last_line = lines[-1] if lines else 1

    # -- position -----------------------------------------------------------------
    def at_end(self) -> bool:
        """Whether all tokens are consumed."""
        return self.pos >= len(self.tokens)

    def line(self) -> int:
        """Line number of the current token (or of the last one at the end)."""
        if self.pos < len(self.lines):
            return self.lines[self.pos]
        return self._last_line

    def error(self, message: str, line: int | None = None) -> LayoutError:
        """A one-line :class:`LayoutError` naming the file and line."""
        return LayoutError(f"{self.path}:{self.line() if line is None else line}: {message}")

    # -- reading ------------------------------------------------------------------
    def peek(self, offset: int = 0) -> str | None:
        """The token ``offset`` ahead of the current one, or None past the end."""
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def next(self, what: str = "a token") -> str:
        """Consume and return the current token; raise at the end of the file."""
        if self.pos >= len(self.tokens):
            raise self.error(f"unexpected end of file, expected {what}")
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expect(self, expected: str) -> None:
        """Consume the current token, which must equal ``expected``."""
        line = self.line()
        tok = self.next(f"'{expected}'")
        if tok != expected:
            raise self.error(f"expected '{expected}', found '{tok}'", line)

    def number(self, what: str = "a number") -> float:
        """Consume a token and parse it as a float."""
        line = self.line()
        tok = self.next(what)
        try:
            return float(tok)
        except ValueError:
            raise self.error(f"expected {what}, found '{tok}'", line) from None

    def integer(self, what: str = "an integer") -> int:
        """Consume a token and parse it as an int."""
        line = self.line()
        tok = self.next(what)
        try:
            return int(tok)
        except ValueError:
            raise self.error(f"expected {what}, found '{tok}'", line) from None

    def statement(self) -> list[str]:
        """Consume the tokens up to and including the next ``;`` (which is dropped)."""
        out: list[str] = []
        while True:
            tok = self.next("';'")
            if tok == ";":
                return out
            out.append(tok)

    def skip_statement(self) -> None:
        """Consume the tokens up to and including the next ``;``."""
        self.statement()

    def skip_block(self, end_name: str) -> None:
        """Consume tokens up to and including ``END end_name``."""
        start = self.line()
        while not self.at_end():
            if self.tokens[self.pos] == "END" and self.peek(1) == end_name:
                self.pos += 2
                return
            self.pos += 1
        raise self.error(f"block starting at line {start} has no 'END {end_name}'")


def parse_float(stream: TokenStream, tok: str, line: int, what: str) -> float:
    """Parse ``tok`` as a float, raising the stream's one-line error on failure."""
    try:
        return float(tok)
    except ValueError:
        raise stream.error(f"expected {what}, found '{tok}'", line) from None


# --------------------------------------------------------------------------------------
# data model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingLayer:
    """A metal (routing) layer.

    Attributes
    ----------
    name : str
    direction : str
        ``"HORIZONTAL"``, ``"VERTICAL"`` or ``""`` when not given.
    width_um : float
        Default wire width, um.
    thickness_um : float or None
        Metal thickness, um.
    height_um : float or None
        Height of the metal's bottom above the substrate, um.
    """

    name: str
    direction: str
    width_um: float
    thickness_um: float | None
    height_um: float | None


@dataclass(frozen=True)
class CutLayer:
    """A cut (via) layer between two routing layers of the stack.

    Attributes
    ----------
    name : str
    below, above : str or None
        The routing layers just below and above it in the stack.
    width_um : float or None
        Default cut size, um.
    """

    name: str
    below: str | None
    above: str | None
    width_um: float | None


@dataclass(frozen=True)
class ViaDef:
    """Geometry of a via relative to its placement point.

    Attributes
    ----------
    name : str
    shapes : tuple of (layer, (x0, y0, x1, y1))
        Rectangles in um, relative to the via origin.
    """

    name: str
    shapes: tuple[tuple[str, Rect], ...]

    def layers(self) -> tuple[str, ...]:
        """Layers the via has shapes on, in order of first appearance."""
        return tuple(dict.fromkeys(layer for layer, _ in self.shapes))


@dataclass(frozen=True)
class Technology:
    """The layer stack and vias of a LEF technology file.

    Attributes
    ----------
    path : str
        Source file.
    dbu_per_micron : float
        ``UNITS DATABASE MICRONS`` (0 when absent).
    stack : tuple of str
        Routing and cut layers in file order (from the substrate upwards).
    routing : dict of str to RoutingLayer
    cuts : dict of str to CutLayer
    vias : dict of str to ViaDef
    """

    path: str
    dbu_per_micron: float
    stack: tuple[str, ...]
    routing: dict[str, RoutingLayer] = field(default_factory=dict)
    cuts: dict[str, CutLayer] = field(default_factory=dict)
    vias: dict[str, ViaDef] = field(default_factory=dict)

    def is_routing(self, name: str) -> bool:
        """Whether ``name`` is a routing layer."""
        return name in self.routing

    def is_cut(self, name: str) -> bool:
        """Whether ``name`` is a cut layer."""
        return name in self.cuts

    def routing_layers_of(self, shapes: Sequence[tuple[str, Rect]]) -> tuple[str, ...]:
        """The routing layers among the layers of ``shapes`` (stack order)."""
        names = {layer for layer, _ in shapes}
        return tuple(n for n in self.stack if n in names and n in self.routing)


# --------------------------------------------------------------------------------------
# generated (VIARULE) via geometry, shared with the DEF reader
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViaRuleParams:
    """Parameters of a VIARULE-generated via (all lengths in one unit, e.g. um).

    Attributes
    ----------
    layers : (bottom, cut, top) layer names
    cut_size : (x, y)
    cut_spacing : (x, y)
        Edge-to-edge spacing between neighbouring cuts.
    enclosure : (x_bot, y_bot, x_top, y_top)
        Metal enclosure of the cut array on the bottom and top layers.
    rowcol : (rows, cols)
    origin : (x, y)
        Shift of the whole via.
    offset : (x_bot, y_bot, x_top, y_top)
        Extra shifts of the bottom and top metal (not the cuts).
    pattern : str or None
        ``PATTERN`` string; not interpreted (all cuts are drawn).
    """

    layers: tuple[str, str, str]
    cut_size: tuple[float, float]
    cut_spacing: tuple[float, float]
    enclosure: tuple[float, float, float, float]
    rowcol: tuple[int, int] = (1, 1)
    origin: tuple[float, float] = (0.0, 0.0)
    offset: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    pattern: str | None = None


def _grow_shift(r: Rect, grow: Sequence[float], shift: Sequence[float]) -> Rect:
    """``r`` grown by ``grow = (gx, gy)`` on each side and shifted by ``shift``."""
    return (
        r[0] - grow[0] + shift[0],
        r[1] - grow[1] + shift[1],
        r[2] + grow[0] + shift[0],
        r[3] + grow[1] + shift[1],
    )


def generated_via_shapes(p: ViaRuleParams, scale: float = 1.0) -> tuple[tuple[str, Rect], ...]:
    """Rectangles of a VIARULE-generated via (LEF/DEF 5.6+ semantics).

    The ``rows x cols`` cut array is centred on the via origin (shifted by
    ``origin``); each metal is the array's bounding box grown by its enclosure and
    shifted by its ``offset`` (and ``origin``).

    Parameters
    ----------
    p : ViaRuleParams
    scale : float
        Factor applied to every length (e.g. ``1 / dbu_per_micron``).

    Returns
    -------
    tuple of (layer, (x0, y0, x1, y1))
        Bottom metal, top metal, then the cuts, in ``scale`` units.
    """
    rows, cols = p.rowcol
    cx, cy = p.cut_size
    sx, sy = p.cut_spacing
    ox, oy = p.origin
    width = cols * cx + (cols - 1) * sx
    height = rows * cy + (rows - 1) * sy
    ax0, ay0 = ox - width / 2.0, oy - height / 2.0
    array = (ax0, ay0, ax0 + width, ay0 + height)
    bot, cut, top = p.layers
    shapes: list[tuple[str, Rect]] = [
        (bot, _grow_shift(array, p.enclosure[:2], p.offset[:2])),
        (top, _grow_shift(array, p.enclosure[2:], p.offset[2:])),
    ]
    for r in range(rows):
        y0 = ay0 + r * (cy + sy)
        for c in range(cols):
            x0 = ax0 + c * (cx + sx)
            shapes.append((cut, (x0, y0, x0 + cx, y0 + cy)))
    return tuple(
        (layer, (x0 * scale, y0 * scale, x1 * scale, y1 * scale))
        for layer, (x0, y0, x1, y1) in shapes
    )


def rectilinear_polygon_rects(points: Sequence[tuple[float, float]]) -> list[Rect]:
    """Decompose a rectilinear (Manhattan) polygon into disjoint rectangles.

    Parameters
    ----------
    points : sequence of (x, y)
        Vertices in order (closing edge implied). Every edge must be horizontal or
        vertical.

    Returns
    -------
    list of (x0, y0, x1, y1)
        Horizontal slabs between consecutive vertex heights (even-odd rule).

    Raises
    ------
    ValueError
        If an edge is diagonal (the caller adds file and line).
    """
    n = len(points)
    vertical: list[tuple[float, float, float]] = []  # (x, ylo, yhi)
    for k in range(n):
        (xa, ya), (xb, yb) = points[k], points[(k + 1) % n]
        if xa != xb and ya != yb:
            raise ValueError("polygon edge is not horizontal or vertical")
        if xa == xb and ya != yb:
            vertical.append((xa, min(ya, yb), max(ya, yb)))
    ys = sorted({y for _, y in points})
    rects: list[Rect] = []
    for y0, y1 in zip(ys[:-1], ys[1:], strict=True):
        ym = 0.5 * (y0 + y1)
        xs = sorted(x for x, lo, hi in vertical if lo <= ym < hi)
        for xa, xb in zip(xs[0::2], xs[1::2], strict=False):
            if xb > xa:
                rects.append((xa, y0, xb, y1))
    return rects


# --------------------------------------------------------------------------------------
# LEF parsing
# --------------------------------------------------------------------------------------


@dataclass
class _LayerInfo:
    name: str
    type: str = ""
    direction: str = ""
    width: float | None = None
    thickness: float | None = None
    height: float | None = None


def _parse_layer(ts: TokenStream) -> _LayerInfo:
    """Parse ``LAYER name ... END name`` (the LAYER keyword already consumed)."""
    info = _LayerInfo(ts.next("a layer name"))
    while True:
        if ts.peek() == "END" and ts.peek(1) == info.name:
            ts.pos += 2
            return info
        line = ts.line()
        stmt = ts.statement()
        if not stmt:
            continue
        key = stmt[0]
        if key == "END":
            found = " ".join(stmt[:2])
            raise ts.error(f"expected 'END {info.name}', found '{found}'", line)
        if key == "TYPE" and len(stmt) >= 2:
            info.type = stmt[1]
        elif key == "DIRECTION" and len(stmt) >= 2:
            info.direction = stmt[1]
        elif key in ("WIDTH", "THICKNESS", "HEIGHT"):
            if len(stmt) != 2:
                raise ts.error(f"{key} of layer {info.name} needs one value", line)
            value = parse_float(ts, stmt[1], line, f"a number for {key}")
            setattr(info, key.lower(), value)


def _parse_rect_statement(ts: TokenStream, stmt: list[str], line: int) -> Rect:
    """``RECT [MASK n] x0 y0 x1 y1`` (the statement's tokens) -> normalised rect."""
    vals = stmt[1:]
    if vals and vals[0] == "MASK":
        vals = vals[2:]
    vals = [v for v in vals if v not in ("(", ")")]
    if len(vals) != 4:
        raise ts.error("RECT needs 4 coordinates", line)
    x0, y0, x1, y1 = (parse_float(ts, v, line, "a RECT coordinate") for v in vals)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _parse_polygon_statement(ts: TokenStream, stmt: list[str], line: int) -> list[Rect]:
    vals = stmt[1:]
    if vals and vals[0] == "MASK":
        vals = vals[2:]
    vals = [v for v in vals if v not in ("(", ")")]
    if len(vals) < 6 or len(vals) % 2:
        raise ts.error("POLYGON needs at least 3 (x, y) points", line)
    nums = [parse_float(ts, v, line, "a POLYGON coordinate") for v in vals]
    try:
        return rectilinear_polygon_rects(list(zip(nums[0::2], nums[1::2], strict=True)))
    except ValueError as exc:
        raise ts.error(str(exc), line) from None


def _numbers(ts: TokenStream, stmt: list[str], line: int, count: int) -> list[float]:
    if len(stmt) - 1 != count:
        raise ts.error(f"{stmt[0]} needs {count} values", line)
    return [parse_float(ts, v, line, f"a number for {stmt[0]}") for v in stmt[1:]]


def _parse_via(ts: TokenStream) -> ViaDef:
    """Parse ``VIA name [DEFAULT] ... END name`` (the VIA keyword already consumed)."""
    name = ts.next("a via name")
    while ts.peek() in ("DEFAULT", "TOPOFSTACKONLY", "GENERATED"):
        ts.next()
    shapes: list[tuple[str, Rect]] = []
    layer: str | None = None
    rule: dict[str, list[float] | list[str] | str] = {}
    while True:
        if ts.peek() == "END" and ts.peek(1) == name:
            ts.pos += 2
            break
        line = ts.line()
        stmt = ts.statement()
        if not stmt:
            continue
        key = stmt[0]
        if key == "END":
            raise ts.error(f"expected 'END {name}'", line)
        if key == "LAYER" and len(stmt) >= 2:
            layer = stmt[1]
        elif key in ("RECT", "POLYGON"):
            shapes.extend(_via_geometry(ts, name, layer, stmt, line))
        else:
            _via_rule_statement(ts, stmt, line, rule)
    if rule:
        shapes.extend(via_rule_shapes(ts, name, rule, 1.0))
    return ViaDef(name, tuple(shapes))


def _via_geometry(ts: TokenStream, name: str, layer: str | None, stmt: list[str],
                  line: int) -> list[tuple[str, Rect]]:
    """The boxes (um) of a fixed via's ``RECT`` or ``POLYGON`` statement on ``layer``."""
    key = stmt[0]
    if layer is None:
        raise ts.error(f"{key} before any LAYER in via {name}", line)
    if key == "RECT":
        return [(layer, _parse_rect_statement(ts, stmt, line))]
    return [(layer, r) for r in _parse_polygon_statement(ts, stmt, line)]


def _via_rule_statement(ts: TokenStream, stmt: list[str], line: int,
                        rule: dict[str, list[float] | list[str] | str]) -> None:
    """Collect a generated via's statement (``VIARULE``, ``LAYERS``, ``CUTSIZE``, ...) in
    ``rule``; other statements are ignored."""
    key = stmt[0]
    if key == "VIARULE":
        rule["VIARULE"] = stmt[1:]
    elif key == "LAYERS":
        if len(stmt) != 4:
            raise ts.error("LAYERS needs 3 layer names", line)
        rule["LAYERS"] = stmt[1:]
    elif key in VIA_RULE_COUNTS:
        rule[key] = _numbers(ts, stmt, line, VIA_RULE_COUNTS[key])
    elif key == "PATTERN":
        rule["PATTERN"] = " ".join(stmt[1:])


VIA_RULE_COUNTS = {
    "CUTSIZE": 2,
    "CUTSPACING": 2,
    "ENCLOSURE": 4,
    "ROWCOL": 2,
    "ORIGIN": 2,
    "OFFSET": 4,
}


def via_rule_shapes(
    ts: TokenStream, name: str, rule: dict, scale: float
) -> tuple[tuple[str, Rect], ...]:
    """Shapes of a generated via from its collected ``+ KEY values`` (LEF or DEF)."""
    missing = [k for k in ("LAYERS", "CUTSIZE", "CUTSPACING", "ENCLOSURE") if k not in rule]
    if missing:
        raise ts.error(f"generated via {name} lacks {', '.join(missing)}")
    rows, cols = rule.get("ROWCOL", [1, 1])
    params = ViaRuleParams(
        layers=tuple(rule["LAYERS"]),  # type: ignore[arg-type]
        cut_size=tuple(rule["CUTSIZE"]),  # type: ignore[arg-type]
        cut_spacing=tuple(rule["CUTSPACING"]),  # type: ignore[arg-type]
        enclosure=tuple(rule["ENCLOSURE"]),  # type: ignore[arg-type]
        rowcol=(int(rows), int(cols)),
        origin=tuple(rule.get("ORIGIN", (0.0, 0.0))),  # type: ignore[arg-type]
        offset=tuple(rule.get("OFFSET", (0.0, 0.0, 0.0, 0.0))),  # type: ignore[arg-type]
        pattern=rule.get("PATTERN"),  # type: ignore[arg-type]
    )
    return generated_via_shapes(params, scale)


def _parse_units(ts: TokenStream) -> float:
    """Parse ``UNITS ... END UNITS``; return DATABASE MICRONS (0 when absent)."""
    dbu = 0.0
    while True:
        if ts.peek() == "END" and ts.peek(1) == "UNITS":
            ts.pos += 2
            return dbu
        line = ts.line()
        stmt = ts.statement()
        if len(stmt) >= 3 and stmt[0] == "DATABASE" and stmt[1] == "MICRONS":
            dbu = parse_float(ts, stmt[2], line, "DATABASE MICRONS value")


def _build_stack(
    infos: list[_LayerInfo], ts: TokenStream
) -> tuple[tuple[str, ...], dict[str, RoutingLayer], dict[str, CutLayer]]:
    """Routing and cut layers, in file order, with cuts linked to their neighbours."""
    stack_infos = [i for i in infos if i.type in ("ROUTING", "CUT")]
    routing: dict[str, RoutingLayer] = {}
    cuts: dict[str, CutLayer] = {}
    for k, info in enumerate(stack_infos):
        if info.type == "ROUTING":
            if info.width is None:
                raise ts.error(f"routing layer {info.name} has no WIDTH")
            routing[info.name] = RoutingLayer(
                info.name, info.direction, info.width, info.thickness, info.height
            )
        else:
            below = next((i.name for i in reversed(stack_infos[:k]) if i.type == "ROUTING"), None)
            above = next((i.name for i in stack_infos[k + 1 :] if i.type == "ROUTING"), None)
            cuts[info.name] = CutLayer(info.name, below, above, info.width)
    return tuple(i.name for i in stack_infos), routing, cuts


def _skip_until(ts: TokenStream, token: str) -> None:
    start = ts.line()
    while not ts.at_end():
        if ts.next() == token:
            return
    raise ts.error(f"block starting at line {start} has no '{token}'")


def read_lef(path: str | Path) -> Technology:
    """Read the layer stack and via definitions of a LEF technology file.

    Parameters
    ----------
    path : str or Path
        LEF file (e.g. ``Nangate45_tech.lef``).

    Returns
    -------
    Technology
        Routing layers (WIDTH, THICKNESS, HEIGHT in um, DIRECTION), cut layers in
        stack order (each between the routing layers before and after it in the
        file), and every ``VIA`` definition as (layer, rect in um) shapes.

    Raises
    ------
    LayoutError
        ``"<file>:<line>: <what is wrong>"`` for malformed content or an unreadable
        file.
    """
    ts = TokenStream(path)
    infos: list[_LayerInfo] = []
    vias: dict[str, ViaDef] = {}
    dbu = 0.0
    while not ts.at_end():
        key = ts.next()
        if key == "LAYER":
            infos.append(_parse_layer(ts))
        elif key == "VIA":
            via = _parse_via(ts)
            vias[via.name] = via
        elif key == "UNITS":
            dbu = _parse_units(ts)
        elif key == "END":
            if ts.peek() == "LIBRARY":
                break
            raise ts.error(f"unexpected 'END {ts.peek()}'")
        elif key in _NAMED_BLOCKS:
            ts.skip_block(ts.next(f"a name after {key}"))
        elif key in _KEYWORD_BLOCKS:
            ts.skip_block(key)
        elif key == "BEGINEXT":
            _skip_until(ts, "ENDEXT")
        else:
            ts.skip_statement()
    stack, routing, cuts = _build_stack(infos, ts)
    if not routing:
        raise ts.error("no routing layers found")
    return Technology(ts.path, dbu, stack, routing, cuts, vias)
