#!/usr/bin/python3
"""Fails on the coroutine patterns g++ 12 miscompiles (double destruction, see
docs/ARCHITECTURE.md): a braced temporary inside a co_await's operand — co_await f({...}),
co_await g(T{...}) — or around it — co_return T{co_await x}; and co_await in a conditional
expression (c ? co_await a : co_await b); assigning a co_await result (r = co_await x)."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
BAD_WRAP = re.compile(r"co_return[^;{}]*\{[^;]*co_await")
BAD_TERNARY = re.compile(r"\?[^;?]*\bco_await\b")  # c ? co_await a : co_await b
BAD_ASSIGN = re.compile(r"^[ \t]*[A-Za-z_][\w.]*(->\w+)*[ \t]*=[ \t]*co_await\b", re.M)  # r = co_await


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)  # string contents can hold braces


def violations(path):
    text = strip_comments(path.read_text())
    found = []
    for m in re.finditer(r"\bco_await\b", text):
        depth, i = 0, m.end()
        while i < len(text) and text[i] != ";":
            c = text[i]
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth < 0:  # end of an enclosing if/while condition
                    break
            elif c == "{":
                if depth > 0:
                    found.append(text.count("\n", 0, m.start()) + 1)
                break  # a body starts here (if (co_await x) {)
            i += 1
    for pattern in (BAD_WRAP, BAD_TERNARY, BAD_ASSIGN):
        for m in pattern.finditer(text):
            found.append(text.count("\n", 0, m.start()) + 1)
    return found


def main():
    bad = []
    for path in sorted(ROOT.glob("**/*.[ch]pp")):
        if "build" in path.relative_to(ROOT).parts:
            continue
        bad += [f"{path.relative_to(ROOT)}:{line}" for line in violations(path)]
    if bad:
        print("co_await patterns g++ 12 miscompiles (see docs/ARCHITECTURE.md):")
        print("\n".join(bad))
        return 1
    print("coroutine lint: clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
