"""Parse IR text (as printed by ``projc.ir.printer``) back into a Graph.

Every printed form parses back: ``format_graph(parse_graph(t)) == t``. Initializer data that the
printer elided (large consts, params) parses as ``data=None``; test IR therefore carries shapes
only, and passes that need values (fold-constants) see the inlined small consts.
"""
from __future__ import annotations

import json
import re
from typing import Any, NoReturn

import numpy as np

from projc.errors import IRParseError
from projc.ir import DTYPES, ROLES, Graph, Op, Value

_NUMBER = re.compile(r"-?(inf|nan|\d+\.?\d*(e[-+]?\d+)?|\.\d+(e[-+]?\d+)?)", re.I)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_NAME = re.compile(r"%([A-Za-z0-9_.]+)")


class _Line:
    """A cursor over one line of IR text."""

    def __init__(self, text: str, lineno: int):
        self.text, self.pos, self.lineno = text, 0, lineno

    def fail(self, what: str) -> NoReturn:
        raise IRParseError(f"line {self.lineno}: {what}\n  {self.text}\n  {' ' * self.pos}^")

    def ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1

    def peek(self, s: str) -> bool:
        self.ws()
        return self.text.startswith(s, self.pos)

    def eat(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str) -> None:
        if not self.eat(s):
            self.fail(f"expected {s!r}")

    def match(self, pattern: re.Pattern, what: str) -> re.Match:
        self.ws()
        m = pattern.match(self.text, self.pos)
        if not m:
            self.fail(f"expected {what}")
        self.pos = m.end()
        return m

    def done(self) -> bool:
        self.ws()
        return self.pos == len(self.text)

    def name(self) -> str:
        return self.match(_NAME, "a %name").group(1)

    def type(self) -> tuple[str, tuple]:
        dtype = self.match(_IDENT, "a dtype").group(0)
        if dtype not in DTYPES:
            self.fail(f"unknown dtype {dtype!r}")
        self.expect("[")
        dims: list[int | str] = []
        while not self.eat("]"):
            if dims:
                self.expect(",")
            tok = self.match(re.compile(r"-?\d+|[A-Za-z_?][A-Za-z0-9_?]*"), "a dim").group(0)
            dims.append(int(tok) if tok.lstrip("-").isdigit() else tok)
        return dtype, tuple(dims)

    def literal(self) -> Any:
        if self.eat("["):
            items: list[Any] = []
            while not self.eat("]"):
                if items:
                    self.expect(",")
                items.append(self.literal())
            return items
        self.ws()
        if self.peek('"'):
            m = self.match(re.compile(r'"(?:[^"\\]|\\.)*"'), "a string")
            return json.loads(m.group(0))
        tok = self.match(_NUMBER, "a literal").group(0)
        is_int = re.fullmatch(r"-?\d+", tok) is not None
        return int(tok) if is_int else float(tok)

    def attrs(self, close: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while not self.eat(close):
            if out:
                self.expect(",")
            key = self.match(_IDENT, "an attribute name").group(0)
            self.expect("=")
            out[key] = self.literal()
        return out


class _GraphBuilder:
    def __init__(self, name: str):
        self.graph = Graph(name=name)
        self.values: dict[str, Value] = {}

    def define(self, line: _Line, name: str, value: Value) -> Value:
        if name in self.values:
            line.fail(f"%{name} is defined twice")
        self.values[name] = value
        return value

    def use(self, line: _Line, name: str) -> Value:
        if name not in self.values:
            line.fail(f"%{name} is used before it is defined")
        return self.values[name]

    def declaration(self, line: _Line, role: str) -> None:
        name = line.name()
        line.expect(":")
        dtype, shape = line.type()
        data = None
        if line.eat("="):
            data = np.asarray(line.literal(), dtype=DTYPES[dtype]).reshape(shape)
        value = self.define(line, name, Value(dtype, shape, role, hint=name, data=data))
        (self.graph.initializers if role in ("param", "const") else self.graph.inputs).append(value)

    def operation(self, line: _Line) -> None:
        outputs: list[tuple[str, str, tuple]] = []
        if line.peek("%"):
            while True:
                name = line.name()
                line.expect(":")
                outputs.append((name, *line.type()))
                if not line.eat(","):
                    break
            line.expect("=")
        kind = line.match(_IDENT, "an op kind").group(0)
        params = line.attrs("]") if line.eat("[") else {}
        operands: list[Value | None] = []
        while not line.done() and not line.peek("{"):
            if operands:
                line.expect(",")
            operands.append(None if line.eat("_") else self.use(line, line.name()))
        annots = line.attrs("}") if line.eat("{") else {}
        if not line.done():
            line.fail("unexpected text after the op")
        outs = [self.define(line, n, Value(dt, sh, "tmp", hint=n)) for n, dt, sh in outputs]
        self.graph.ops.append(Op(kind, operands, outs, params, annots))


def parse_graph(text: str) -> Graph:
    """Parse one ``graph @name { ... }`` block. Raises IRParseError with the offending line."""
    lines = [(i + 1, t) for i, t in enumerate(text.splitlines()) if t.strip() and not t.strip().startswith("#")]
    if not lines:
        raise IRParseError("empty IR text")
    lineno, header = lines[0]
    m = re.fullmatch(r"graph @([A-Za-z0-9_.]+) \{", header.strip())
    if not m:
        _Line(header, lineno).fail("expected 'graph @name {'")
    builder = _GraphBuilder(m.group(1))
    closed = False
    for lineno, text_line in lines[1:]:
        line = _Line(text_line, lineno)
        if closed:
            line.fail("text after the closing '}'")
        if line.eat("}"):
            closed = True
        elif line.eat("return"):
            while not line.done():
                if builder.graph.outputs:
                    line.expect(",")
                builder.graph.outputs.append(builder.use(line, line.name()))
        else:
            role = next((r for r in ROLES if r != "tmp" and line.peek(r + " ")), None)
            if role:
                line.expect(role)
                builder.declaration(line, role)
            else:
                builder.operation(line)
    if not closed:
        raise IRParseError("missing the closing '}'")
    return builder.graph
