#!/usr/bin/env python3
"""Fails when two top-level modules of src/ depend on each other, directly or through others.

A top-level module is a file or directory directly under src/ (lib.rs and main.rs, the crate
roots, are left out). Its dependencies are the other top-level modules it names through
`crate::` paths, anywhere in its code: `use crate::x::..`, grouped
`use crate::{x, y::{..}}`, inline `crate::x::f()`, and `super::x` written in a file directly
under src/ (where `super` is the crate). Comments and string literals are ignored.

With --layers FILE it also checks the layer diagram in FILE (README.md's Layout section):
the indented lines after the line holding LAYERS_MARKER, one layer per line, modules before
an em dash. Every module must be on exactly one line and use only modules on lines below
its own.

Usage: .ci/module-cycles.py [--layers README.md] [SRC_DIR]  prints each module's
dependencies, then every cycle and layer violation; exits 1 if there is one.
"""
import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
LAYERS_MARKER = "module-cycles.py checks this diagram"


def strip_comments_and_strings(text):
    """Blanks out comments, string and char literals so paths in them don't count."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif (m := re.match(r'b?r(#*)"', text[i:])) and (i == 0 or not re.match(r"\w", text[i - 1])):
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and (m := re.match(r"'(\\.[^']*|[^'\\])'", text[i:])):
            i += len(m.group(0))  # a char literal; lifetimes ('a) don't match
        else:
            out.append(c)
            i += 1
    return "".join(out)


def group_heads(body):
    """`a, b::{c, d}, self` -> the first segment of each item at depth 0."""
    items, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    heads = set()
    for item in items:
        m = re.match(IDENT, item.strip())
        if m and m.group(0) not in ("self", "super", "crate"):
            heads.add(m.group(0))
    return heads


def crate_refs(text, at_top):
    """Top-level module names a file refers to."""
    text = strip_comments_and_strings(text)
    roots = [r"\bcrate"] + ([r"(?<![\w:])super"] if at_top else [])
    out = set()
    for root in roots:
        for m in re.finditer(root + r"\s*::\s*", text):
            rest = text[m.end():]
            if rest.startswith("{"):
                depth = 0
                for k, ch in enumerate(rest):
                    depth += ch == "{"
                    depth -= ch == "}"
                    if depth == 0:
                        out |= group_heads(rest[1:k])
                        break
            elif (name := re.match(IDENT, rest)):
                out.add(name.group(0))
    return out


def graph(root):
    mods = {}
    for entry in sorted(os.listdir(root)):
        name = entry.removesuffix(".rs")
        if name in ("lib", "main") or not (entry.endswith(".rs") or os.path.isdir(os.path.join(root, entry))):
            continue
        mods.setdefault(name, set())
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root).split(os.sep)
            top = rel[0].removesuffix(".rs")
            if top not in mods:
                continue
            # `super` names the crate only in a file directly under src/ (or its mod.rs-less
            # directory module's own file, which is the same file).
            at_top = len(rel) == 1
            with open(path, encoding="utf-8") as fh:
                mods[top] |= crate_refs(fh.read(), at_top)
    for name, deps in mods.items():
        deps.discard(name)
        deps &= set(mods)
    return mods


def cycles(mods):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(mods[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(mods):
        if v not in index:
            visit(v)
    return found


def read_layers(path):
    """{module: line number in the diagram}; 0 is the top layer."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    start = next((i for i, l in enumerate(lines) if LAYERS_MARKER in l), None)
    if start is None:
        sys.exit(f"{path}: no line holds {LAYERS_MARKER!r}")
    layers, depth = {}, 0
    for line in lines[start + 1:]:
        if not line.strip() and depth == 0:
            continue
        if not line.startswith("    ") or "\u2014" not in line:
            break
        for name in re.findall(IDENT, line.split("\u2014")[0]):
            if name in layers:
                sys.exit(f"{path}: module {name} is on two layers")
            layers[name] = depth
        depth += 1
    return layers


def layer_violations(mods, layers):
    problems = []
    for name in sorted(mods):
        if name not in layers:
            problems.append(f"module {name} is not in the layer diagram")
    for name in sorted(layers):
        if name not in mods:
            problems.append(f"the layer diagram names {name}, which is not a module")
    for a in sorted(mods):
        for b in sorted(mods[a]):
            if a in layers and b in layers and layers[b] <= layers[a]:
                problems.append(f"{a} uses {b}, which is not on a lower layer")
    return problems


def main():
    args = sys.argv[1:]
    layers_file = None
    if args[:1] == ["--layers"]:
        layers_file, args = args[1], args[2:]
    root = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "src")
    mods = graph(root)
    for name in sorted(mods):
        print(f"{name} -> {' '.join(sorted(mods[name]))}")
    bad = cycles(mods)
    for comp in bad:
        edges = [f"{a}->{b}" for a in comp for b in sorted(mods[a]) if b in comp]
        print(f"CYCLE among: {' '.join(comp)}  ({', '.join(edges)})")
    problems = layer_violations(mods, read_layers(layers_file)) if layers_file else []
    for p in problems:
        print(f"LAYERS ({layers_file}): {p}")
    if bad or problems:
        sys.exit(1)
    print("no import cycles between top-level modules" + (f"; {layers_file}'s layers hold" if layers_file else ""))


if __name__ == "__main__":
    main()
