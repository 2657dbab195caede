"""Reader for the routed geometry of a DEF file, as axis-aligned boxes per layer.

What is read
------------
* ``UNITS DISTANCE MICRONS`` and ``DIEAREA``.
* ``VIAS``: fixed vias (``+ RECT layer pt pt``, ``+ POLYGON layer pts``, optional
  ``+ MASK n``) and generated vias (``+ VIARULE r + CUTSIZE + LAYERS + CUTSPACING
  + ENCLOSURE [+ ROWCOL] [+ ORIGIN] [+ OFFSET] [+ PATTERN]``, expanded into the
  bottom metal, top metal and every cut; a PATTERN is not interpreted, i.e. all
  cuts are drawn).
* ``NONDEFAULTRULES``: per-layer ``WIDTH`` and ``WIREEXT`` (used by nets with
  ``+ NONDEFAULTRULE``).
* ``NETS`` and ``SPECIALNETS`` routing: ``+ ROUTED | FIXED | COVER | NOSHIELD``
  (and ``+ SHIELD net``) with ``NEW`` continuations, points ``( x y [ext] )`` with
  ``*`` for the previous coordinate, ``MASK n`` (ignored), ``RECT ( dx1 dy1 dx2 dy2 )``
  (relative to the previous point), ``VIRTUAL ( x y )`` (moves without metal), and
  via names (with an optional orientation) that place a via at the current point
  and move the path to the via's other routing layer. In SPECIALNETS also
  ``+ RECT``, ``+ POLYGON`` and ``+ VIA name [orient] pts``.
* ``FILLS``: ``LAYER`` rectangles/polygons and fill vias.

Wire geometry (LEF/DEF 5.8 rules)
---------------------------------
* Regular nets: width = the layer's LEF ``WIDTH`` (or the net's non-default rule
  width); each segment end extends past its point by the point's explicit
  extension, else by the rule's ``WIREEXT``, else by half the width.
* Special nets: width = the explicit route width; a segment end extends past its
  point only by an explicit extension value; without one the end is flush
  (extension 0). ``+ SHAPE`` and ``+ STYLE`` do not change that (STYLES-defined
  octagonal outlines are not modelled). This matches this design's power grid:
  followpin rails span exactly the rows and the metal4 stripes end flush with the
  outer edges of the first and last rail.
* A zero-length segment is drawn as a box of the wire width centred on the point,
  extended along x by the end extensions (with the default half width: a square).

Not read: components and pins (cell-internal metal is not in a technology LEF),
blockages, regions, groups, scan chains.

All output coordinates are in um (DEF database units / ``UNITS DISTANCE MICRONS``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hpc_adept.phantom.lef import (
    VIA_RULE_COUNTS,
    Rect,
    Technology,
    TokenStream,
    ViaDef,
    rectilinear_polygon_rects,
    via_rule_shapes,
)

KIND_WIRE = 0
"""Box kind: a wire segment of a regular (signal) net."""
KIND_SPECIAL_WIRE = 1
"""Box kind: a wire segment of a special (power/ground) net."""
KIND_VIA = 2
"""Box kind: a pad or cut of a via in a regular net."""
KIND_SPECIAL_VIA = 3
"""Box kind: a pad or cut of a via in a special net."""
KIND_SHAPE = 4
"""Box kind: an explicit RECT/POLYGON (routing RECT, special-net shape, fill)."""

_SECTIONS_WITH_END = frozenset(
    {
        "PROPERTYDEFINITIONS",
        "VIAS",
        "STYLES",
        "NONDEFAULTRULES",
        "REGIONS",
        "COMPONENTS",
        "PINS",
        "PINPROPERTIES",
        "BLOCKAGES",
        "SLOTS",
        "FILLS",
        "SPECIALNETS",
        "NETS",
        "SCANCHAINS",
        "GROUPS",
    }
)

_ORIENTS: dict[str, Callable[[float, float], tuple[float, float]]] = {
    "N": lambda x, y: (x, y),
    "S": lambda x, y: (-x, -y),
    "W": lambda x, y: (-y, x),
    "E": lambda x, y: (y, -x),
    "FN": lambda x, y: (-x, y),
    "FS": lambda x, y: (x, -y),
    "FW": lambda x, y: (y, x),
    "FE": lambda x, y: (-y, -x),
}

_WIRE_STATUS = frozenset({"ROUTED", "FIXED", "COVER", "NOSHIELD"})


# --------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Routed metal of a DEF design as axis-aligned boxes per layer.

    Attributes
    ----------
    path : str
        Source DEF file.
    design : str
        ``DESIGN`` name.
    dbu_per_micron : float
        ``UNITS DISTANCE MICRONS``.
    die_area_um : (x0, y0, x1, y1)
        Bounding box of ``DIEAREA``, um.
    boxes : dict of str to ndarray
        Per layer, ``[n, 4]`` float64 ``(x0, y0, x1, y1)`` in um (DEF coordinates):
        wires, via pads on routing layers, via cuts on cut layers, explicit shapes.
    kinds : dict of str to ndarray
        Per layer, ``[n]`` int8 box kind (``KIND_*`` constants), parallel to ``boxes``.
    n_vias, n_special_vias : int
        Via placements in NETS and in SPECIALNETS.
    via_usage : dict of str to int
        Placements per via name (both sections).
    nets : dict of str to ndarray
        Per layer, ``[n]`` int32 net id of each box (parallel to ``boxes``): ``i + 1`` for
        ``net_names[i]``. Metal outside any net (FILLS) gets one id per box, named
        ``FILL:<layer>:<k>``.
    vias : dict of str to ndarray
        Per layer, ``[n]`` int32 via instance id of each box on a cut layer (1, 2, ... in
        placement order), 0 for every other box.
    net_names : tuple of str
        Net names (NETS and SPECIALNETS, then fills), in id order.
    """

    path: str
    design: str
    dbu_per_micron: float
    die_area_um: Rect
    boxes: dict[str, np.ndarray]
    kinds: dict[str, np.ndarray]
    n_vias: int
    n_special_vias: int
    via_usage: dict[str, int]
    nets: dict[str, np.ndarray] = field(default_factory=dict)
    vias: dict[str, np.ndarray] = field(default_factory=dict)
    net_names: tuple[str, ...] = ()

    def layer_boxes(self, layer: str, kinds: tuple[int, ...] | None = None) -> np.ndarray:
        """Boxes ``[n, 4]`` float64 (um) on ``layer``, optionally only of some kinds."""
        boxes = self.boxes.get(layer, np.zeros((0, 4)))
        if kinds is None:
            return boxes
        return boxes[np.isin(self.kinds[layer], kinds)]

    def segment_counts(self, kind: int = KIND_WIRE) -> dict[str, int]:
        """Number of wire segments (boxes of ``kind``) per layer, layers without any omitted."""
        out = {layer: int(np.count_nonzero(k == kind)) for layer, k in self.kinds.items()}
        return {layer: n for layer, n in out.items() if n}

    def select(
        self, layers: tuple[str, ...] | None = None, kinds: tuple[int, ...] | None = None
    ) -> Layout:
        """A copy restricted to some layers and/or box kinds (counts unchanged)."""
        kept: dict[str, np.ndarray] = {}
        for layer, b in self.boxes.items():
            if layers is not None and layer not in layers:
                continue
            keep = np.ones(len(b), bool) if kinds is None else np.isin(self.kinds[layer], kinds)
            if np.any(keep):
                kept[layer] = keep
        return replace(
            self,
            boxes={layer: self.boxes[layer][k] for layer, k in kept.items()},
            kinds={layer: self.kinds[layer][k] for layer, k in kept.items()},
            nets={layer: self.nets[layer][k] for layer, k in kept.items() if layer in self.nets},
            vias={layer: self.vias[layer][k] for layer, k in kept.items() if layer in self.vias},
            via_usage=dict(self.via_usage),
        )


# --------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    """A raw wire segment in DEF units; widths resolved at the end of the net."""

    layer: str
    x0: float
    y0: float
    x1: float
    y1: float
    ext0: float | None
    ext1: float | None
    width: float | None  # explicit (special) width, None = layer/rule default
    line: int


class _DefParser:
    """Recursive-descent DEF reader collecting boxes (see the module docstring)."""

    def __init__(self, path: str | Path, tech: Technology) -> None:
        self.ts = TokenStream(path)
        self.tech = tech
        self.dbu: float | None = None
        self.design = ""
        self.die: Rect = (0.0, 0.0, 0.0, 0.0)
        self.vias: dict[str, ViaDef] = {}
        self.ndr: dict[str, dict[str, tuple[float, float | None]]] = {}
        self.shapes: dict[str, list[Rect]] = {}
        self.shape_kinds: dict[str, list[int]] = {}
        self.n_vias = 0
        self.n_special_vias = 0
        self.via_usage: Counter[str] = Counter()
        # circuit truth: the net and via instance each box belongs to
        self.net_names: list[str] = []
        self.net_id = 0
        self.via_id = 0
        self.n_via_instances = 0
        self.shape_nets: dict[str, list[int]] = {}
        self.shape_vias: dict[str, list[int]] = {}

    # -- helpers ------------------------------------------------------------------
    def scale(self) -> float:
        """um per database unit."""
        if self.dbu is None:
            if self.tech.dbu_per_micron > 0:
                self.dbu = self.tech.dbu_per_micron
            else:
                raise self.ts.error("coordinates before UNITS DISTANCE MICRONS")
        return 1.0 / self.dbu

    def add(self, layer: str, rect: Rect, kind: int) -> None:
        """Record a box (um) on ``layer``, with its net and (on cut layers) via instance."""
        self.shapes.setdefault(layer, []).append(rect)
        self.shape_kinds.setdefault(layer, []).append(kind)
        net = self.net_id
        if net == 0:  # metal of no net (fills): a net of its own
            self.net_names.append(f"FILL:{layer}:{len(self.shapes[layer]) - 1}")
            net = len(self.net_names)
        self.shape_nets.setdefault(layer, []).append(net)
        self.shape_vias.setdefault(layer, []).append(
            self.via_id if layer in self.tech.cuts else 0)

    def add_dbu(self, layer: str, rect: Rect, kind: int) -> None:
        """Record a box given in database units."""
        s = self.scale()
        x0, y0, x1, y1 = rect
        self.add(layer, (min(x0, x1) * s, min(y0, y1) * s, max(x0, x1) * s, max(y0, y1) * s), kind)

    def check_layer(self, name: str, line: int) -> str:
        """``name`` if it is a layer of the technology, else raise."""
        if name not in self.tech.routing and name not in self.tech.cuts:
            raise self.ts.error(f"unknown layer '{name}'", line)
        return name

    def point(self, prev: tuple[float, float] | None = None) -> tuple[float, float, float | None]:
        """Read ``( x y [ext] )``; ``*`` repeats the coordinate of ``prev``."""
        ts = self.ts
        ts.expect("(")
        vals: list[float | None] = []
        while ts.peek() != ")":
            line = ts.line()
            tok = ts.next("')'")
            if tok == "*":
                if prev is None or len(vals) >= 2:
                    raise ts.error("'*' without a previous point", line)
                vals.append(prev[len(vals)])
            else:
                try:
                    vals.append(float(tok))
                except ValueError:
                    raise ts.error(f"expected a coordinate, found '{tok}'", line) from None
        ts.next()
        if len(vals) not in (2, 3):
            raise ts.error(f"a point needs 2 or 3 values, found {len(vals)}")
        return vals[0], vals[1], (vals[2] if len(vals) == 3 else None)  # type: ignore[return-value]

    def points(self) -> list[tuple[float, float]]:
        """Read consecutive points (``*`` allowed), dropping extensions."""
        pts: list[tuple[float, float]] = []
        while self.ts.peek() == "(":
            x, y, _ = self.point(pts[-1] if pts else None)
            pts.append((x, y))
        return pts

    def skip_mask(self) -> None:
        """Skip an optional ``+ MASK n``."""
        if self.ts.peek() == "+" and self.ts.peek(1) == "MASK":
            self.ts.pos += 3

    def skip_option(self) -> None:
        """Skip the tokens of an unknown ``+ KEY ...`` option up to the next ``+``/``;``."""
        while self.ts.peek() not in ("+", ";", None):
            self.ts.next()

    def polygon_boxes(self, layer: str, pts: list[tuple[float, float]], kind: int) -> None:
        """Decompose a rectilinear polygon (DEF units) into boxes."""
        if len(pts) < 3:
            raise self.ts.error("POLYGON needs at least 3 points")
        try:
            rects = rectilinear_polygon_rects(pts)
        except ValueError as exc:
            raise self.ts.error(str(exc)) from None
        for r in rects:
            self.add_dbu(layer, r, kind)

    # -- top level ----------------------------------------------------------------
    def parse(self) -> Layout:
        ts = self.ts
        while not ts.at_end():
            line = ts.line()
            key = ts.next()
            if key == "END":
                if ts.peek() == "DESIGN":
                    break
                raise ts.error(f"unexpected 'END {ts.peek()}'", line)
            handler = self._handlers().get(key)
            if handler is not None:
                handler()
            elif key in _SECTIONS_WITH_END:
                ts.skip_block(key)
            elif key == "BEGINEXT":
                while ts.next("ENDEXT") != "ENDEXT":
                    pass
            else:
                ts.skip_statement()
        return self.result()

    def _handlers(self) -> dict[str, Callable[[], None]]:
        return {
            "DESIGN": self._design,
            "UNITS": self._units,
            "DIEAREA": self._diearea,
            "VIAS": self._vias,
            "NONDEFAULTRULES": self._ndrs,
            "NETS": lambda: self._nets(special=False),
            "SPECIALNETS": lambda: self._nets(special=True),
            "FILLS": self._fills,
        }

    def result(self) -> Layout:
        boxes = {k: np.asarray(v, dtype=np.float64).reshape(-1, 4) for k, v in self.shapes.items()}
        kinds = {k: np.asarray(v, dtype=np.int8) for k, v in self.shape_kinds.items()}
        nets = {k: np.asarray(v, dtype=np.int32) for k, v in self.shape_nets.items()}
        vias = {k: np.asarray(v, dtype=np.int32) for k, v in self.shape_vias.items()}
        return Layout(
            self.ts.path,
            self.design,
            float(self.dbu or 0.0),
            self.die,
            boxes,
            kinds,
            self.n_vias,
            self.n_special_vias,
            dict(self.via_usage),
            nets,
            vias,
            tuple(self.net_names),
        )

    def _design(self) -> None:
        stmt = self.ts.statement()
        self.design = stmt[0] if stmt else ""

    def _units(self) -> None:
        line = self.ts.line()
        stmt = self.ts.statement()
        if len(stmt) != 3 or stmt[:2] != ["DISTANCE", "MICRONS"]:
            raise self.ts.error("expected 'UNITS DISTANCE MICRONS <n> ;'", line)
        try:
            self.dbu = float(stmt[2])
        except ValueError:
            raise self.ts.error(f"bad UNITS value '{stmt[2]}'", line) from None
        if self.dbu <= 0:
            raise self.ts.error("UNITS DISTANCE MICRONS must be positive", line)

    def _diearea(self) -> None:
        pts = self.points()
        if len(pts) < 2:
            raise self.ts.error("DIEAREA needs at least 2 points")
        self.ts.expect(";")
        s = self.scale()
        xs, ys = [p[0] * s for p in pts], [p[1] * s for p in pts]
        self.die = (min(xs), min(ys), max(xs), max(ys))

    def _section_header(self) -> None:
        """Consume ``[n] ;`` after a section keyword; entries then start with ``-``."""
        self.ts.statement()

    def _end_of_section(self, section: str) -> bool:
        """True (consuming ``END section``) at the section's end; else expect ``-``."""
        ts = self.ts
        line = ts.line()
        tok = ts.next(f"'END {section}'")
        if tok == "END":
            ts.expect(section)
            return True
        if tok != "-":
            raise ts.error(f"expected '-' or 'END {section}', found '{tok}'", line)
        return False

    # -- VIAS ---------------------------------------------------------------------
    def _vias(self) -> None:
        self._section_header()
        while not self._end_of_section("VIAS"):
            via = self._via_entry()
            self.vias[via.name] = via

    def _via_entry(self) -> ViaDef:
        ts = self.ts
        name = ts.next("a via name")
        s = self.scale()
        shapes: list[tuple[str, Rect]] = []
        rule: dict[str, object] = {}
        while True:
            line = ts.line()
            tok = ts.next("';'")
            if tok == ";":
                break
            if tok != "+":
                raise ts.error(f"expected '+' or ';' in via {name}, found '{tok}'", line)
            key = ts.next()
            if key in ("RECT", "POLYGON"):
                shapes.extend(self._via_shapes(key, line, s))
            else:
                self._via_rule_option(key, line, rule)
        if rule:
            shapes.extend(via_rule_shapes(ts, name, rule, s))
        if not shapes:
            raise ts.error(f"via {name} has no geometry")
        return ViaDef(name, tuple(shapes))

    def _via_shapes(self, key: str, line: int, s: float) -> list[tuple[str, Rect]]:
        """The boxes (um) of a fixed via's ``+ RECT`` or ``+ POLYGON`` (``key``, read);
        ``s`` is um per database unit."""
        ts = self.ts
        layer = self.check_layer(ts.next("a layer name"), line)
        self.skip_mask()
        pts = self.points()
        if key == "POLYGON":
            return [(layer, tuple(v * s for v in r))  # type: ignore[misc]
                    for r in rectilinear_polygon_rects(pts)]
        if len(pts) != 2:
            raise ts.error("RECT needs 2 points", line)
        (x0, y0), (x1, y1) = pts
        return [(layer, _norm((x0 * s, y0 * s, x1 * s, y1 * s)))]

    def _via_rule_option(self, key: str, line: int, rule: dict[str, object]) -> None:
        """Collect a generated via's ``+ key ...`` (read) in ``rule``; skip other options."""
        ts = self.ts
        if key == "VIARULE":
            rule["VIARULE"] = ts.next("a rule name")
        elif key == "LAYERS":
            rule["LAYERS"] = [self.check_layer(ts.next("a layer name"), line) for _ in "bct"]
        elif key in VIA_RULE_COUNTS:
            rule[key] = [ts.number(f"a number for {key}") for _ in range(VIA_RULE_COUNTS[key])]
        elif key == "PATTERN":
            rule["PATTERN"] = ts.next("a pattern")
        else:
            self.skip_option()

    # -- NONDEFAULTRULES ----------------------------------------------------------
    def _ndrs(self) -> None:
        self._section_header()
        ts = self.ts
        while not self._end_of_section("NONDEFAULTRULES"):
            name = ts.next("a rule name")
            widths: dict[str, tuple[float, float | None]] = {}
            while True:
                tok = ts.next("';'")
                if tok == ";":
                    break
                if tok == "+" and ts.peek() == "LAYER":
                    ts.next()
                    layer = ts.next("a layer name")
                    width, ext = 0.0, None
                    while ts.peek() not in ("+", ";", None):
                        k = ts.next()
                        if k == "WIDTH":
                            width = ts.number("a WIDTH")
                        elif k == "WIREEXT":
                            ext = ts.number("a WIREEXT")
                        else:
                            ts.next()
                    widths[layer] = (width, ext)
            self.ndr[name] = widths

    # -- NETS / SPECIALNETS -------------------------------------------------------
    def _nets(self, special: bool) -> None:
        section = "SPECIALNETS" if special else "NETS"
        self._section_header()
        while not self._end_of_section(section):
            self._net(special)

    def _net(self, special: bool) -> None:
        ts = self.ts
        self.net_names.append(ts.next("a net name"))
        self.net_id = len(self.net_names)
        segments: list[_Segment] = []
        rule: str | None = None
        while True:
            line = ts.line()
            tok = ts.next("';' ending the net")
            if tok == ";":
                break
            if tok == "(":
                while ts.next("')'") != ")":
                    pass
            elif tok == "+":
                key = ts.next()
                if key in _WIRE_STATUS:
                    self._wiring(special, segments)
                elif key == "SHIELD":
                    ts.next("a shield net name")
                    self._wiring(special, segments)
                elif key == "NONDEFAULTRULE":
                    rule = ts.next("a rule name")
                elif special and key in ("RECT", "POLYGON"):
                    self._special_shape(key, line)
                elif special and key == "VIA":
                    self._special_via_pts()
                else:
                    self.skip_option()
            elif tok == "MUSTJOIN":
                continue
            else:
                raise ts.error(f"unexpected '{tok}' in net", line)
        self._emit_segments(segments, special, rule)
        self.net_id = 0

    def _special_shape(self, key: str, line: int) -> None:
        layer = self.check_layer(self.ts.next("a layer name"), line)
        self.skip_mask()
        pts = self.points()
        if key == "RECT":
            if len(pts) != 2:
                raise self.ts.error("RECT needs 2 points", line)
            self.add_dbu(layer, (*pts[0], *pts[1]), KIND_SHAPE)
        else:
            self.polygon_boxes(layer, pts, KIND_SHAPE)

    def _special_via_pts(self) -> None:
        ts = self.ts
        line = ts.line()
        name = ts.next("a via name")
        orient = ts.next() if ts.peek() in _ORIENTS else "N"
        self.skip_mask()
        for x, y in self.points():
            self._place_via(name, orient, x, y, special=True, line=line)

    def _wiring(self, special: bool, segments: list[_Segment]) -> None:
        """One ``+ ROUTED ...`` statement with its ``NEW`` continuations."""
        ts = self.ts
        while True:
            line = ts.line()
            layer = self.check_layer(ts.next("a layer name"), line)
            width: float | None = None
            if special:
                width = ts.number("a route width")
                while ts.peek() == "+" and ts.peek(1) in ("SHAPE", "STYLE", "MASK"):
                    ts.pos += 3
            else:
                while ts.peek() in ("TAPER", "TAPERRULE", "STYLE"):
                    if ts.next() != "TAPER":
                        ts.next()
            self._route_points(layer, width, special, segments)
            if ts.peek() != "NEW":
                return
            ts.next()

    def _route_points(
        self, layer: str, width: float | None, special: bool, segments: list[_Segment]
    ) -> None:
        """Points, RECTs, VIRTUAL points and vias of one wire path."""
        ts = self.ts
        prev: tuple[float, float, float | None] | None = None
        while True:
            line = ts.line()
            tok = ts.peek()
            if tok in (None, "NEW", "+", ";"):
                if prev is None:
                    raise ts.error("wire path without points", line)
                return
            if tok == "(":
                p = self.point(prev[:2] if prev else None)
                if prev is not None:
                    seg = _Segment(layer, prev[0], prev[1], p[0], p[1], prev[2], p[2], width, line)
                    if seg.x0 != seg.x1 and seg.y0 != seg.y1:
                        raise ts.error("diagonal wire segment", line)
                    segments.append(seg)
                prev = p
            elif tok == "MASK":
                ts.pos += 2
            elif tok == "VIRTUAL":
                ts.next()
                p = self.point(prev[:2] if prev else None)
                prev = (p[0], p[1], None)
            elif tok == "RECT":
                ts.next()
                if prev is None:
                    raise ts.error("RECT before any point", line)
                ts.expect("(")
                d = [ts.number("a RECT offset") for _ in range(4)]
                ts.expect(")")
                x, y = prev[0], prev[1]
                self.add_dbu(layer, (x + d[0], y + d[1], x + d[2], y + d[3]), KIND_SHAPE)
            else:
                ts.next()
                if prev is None:
                    raise ts.error(f"via '{tok}' before any point", line)
                orient = ts.next() if ts.peek() in _ORIENTS else "N"
                layer = self._place_via(tok, orient, prev[0], prev[1], special, line, layer)
                prev = (prev[0], prev[1], None)

    def _place_via(
        self,
        name: str,
        orient: str,
        x: float,
        y: float,
        special: bool,
        line: int,
        layer: str | None = None,
    ) -> str:
        """Add a via's shapes at ``(x, y)`` (DEF units); return the path's new layer."""
        via = self.vias.get(name) or self.tech.vias.get(name)
        if via is None:
            raise self.ts.error(f"unknown via or token '{name}'", line)
        s = self.scale()
        fx = _ORIENTS[orient]
        kind = KIND_SPECIAL_VIA if special else KIND_VIA
        self.n_via_instances += 1
        self.via_id, outer_net = self.n_via_instances, self.net_id
        if outer_net == 0:  # a fill via: its cut and pads are one net of their own
            self.net_names.append(f"FILL:{name}:{self.n_via_instances}")
            self.net_id = len(self.net_names)
        for vlayer, (x0, y0, x1, y1) in via.shapes:
            ax, ay = fx(x0, y0)
            bx, by = fx(x1, y1)
            self.add(vlayer, _norm((ax + x * s, ay + y * s, bx + x * s, by + y * s)), kind)
        self.via_id, self.net_id = 0, outer_net
        if special:
            self.n_special_vias += 1
        else:
            self.n_vias += 1
        self.via_usage[name] += 1
        metals = self.tech.routing_layers_of(via.shapes)
        if layer in metals and len(metals) == 2:
            return metals[1] if metals[0] == layer else metals[0]
        return layer or ""

    def _emit_segments(self, segments: list[_Segment], special: bool, rule: str | None) -> None:
        """Turn a net's segments into boxes once its widths are known."""
        widths = self.ndr.get(rule, {}) if rule else {}
        if rule and rule not in self.ndr:
            raise self.ts.error(f"unknown NONDEFAULTRULE '{rule}'")
        for seg in segments:
            if special:
                width, default_ext = float(seg.width or 0.0), 0.0
            else:
                if seg.layer not in self.tech.routing:
                    raise self.ts.error(f"wire on non-routing layer '{seg.layer}'", seg.line)
                lef_width = self.tech.routing[seg.layer].width_um * (self.dbu or 0.0)
                width, ext = widths.get(seg.layer, (lef_width, None))
                default_ext = width / 2.0 if ext is None else ext
            e0 = default_ext if seg.ext0 is None else seg.ext0
            e1 = default_ext if seg.ext1 is None else seg.ext1
            box = _segment_box(seg, width, e0, e1)
            if box[2] > box[0] and box[3] > box[1]:
                self.add_dbu(seg.layer, box, KIND_SPECIAL_WIRE if special else KIND_WIRE)

    # -- FILLS --------------------------------------------------------------------
    def _fills(self) -> None:
        self._section_header()
        ts = self.ts
        while not self._end_of_section("FILLS"):
            line = ts.line()
            key = ts.next()
            if key == "LAYER":
                layer = self.check_layer(ts.next("a layer name"), line)
                while ts.peek() not in (";", None):
                    tok = ts.next()
                    if tok in ("RECT", "POLYGON"):
                        pts = self.points()
                        if tok == "RECT" and len(pts) == 2:
                            self.add_dbu(layer, (*pts[0], *pts[1]), KIND_SHAPE)
                        elif tok == "POLYGON":
                            self.polygon_boxes(layer, pts, KIND_SHAPE)
                        else:
                            raise ts.error("RECT needs 2 points", line)
                ts.expect(";")
            elif key == "VIA":
                name = ts.next("a via name")
                while ts.peek() == "+":
                    ts.pos += 1
                    if ts.next() == "MASK":
                        ts.next()
                for x, y in self.points():
                    self._place_via(name, "N", x, y, special=True, line=line)
                ts.expect(";")
            else:
                ts.skip_statement()


def _norm(r: tuple[float, float, float, float]) -> Rect:
    x0, y0, x1, y1 = r
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _segment_box(seg: _Segment, width: float, e0: float, e1: float) -> Rect:
    """Box of a Manhattan segment of ``width`` extended by e0 / e1 past its ends."""
    hw = width / 2.0
    if seg.y0 == seg.y1:  # horizontal (or zero-length: extended along x)
        if seg.x0 <= seg.x1:
            return (seg.x0 - e0, seg.y0 - hw, seg.x1 + e1, seg.y0 + hw)
        return (seg.x1 - e1, seg.y0 - hw, seg.x0 + e0, seg.y0 + hw)
    if seg.y0 <= seg.y1:
        return (seg.x0 - hw, seg.y0 - e0, seg.x0 + hw, seg.y1 + e1)
    return (seg.x0 - hw, seg.y1 - e1, seg.x0 + hw, seg.y0 + e0)


def read_def(path: str | Path, tech: Technology) -> Layout:
    """Read the routed metal of a DEF file.

    Parameters
    ----------
    path : str or Path
        DEF file.
    tech : Technology
        From :func:`hpc_adept.phantom.lef.read_lef`: layer names, default widths and
        the vias the DEF refers to.

    Returns
    -------
    Layout
        Boxes per layer in um (see the module docstring for the rules used).

    Raises
    ------
    LayoutError
        ``"<file>:<line>: <what is wrong>"`` for malformed content, unknown layers or
        vias, or an unreadable file (a DataError and a ValueError).
    """
    return _DefParser(path, tech).parse()
