#!/usr/bin/python3
"""Fails on the coroutine patterns g++ 12 miscompiles (double destruction, see
docs/ARCHITECTURE.md): a braced temporary inside a co_await's operand — co_await f({...}),
co_await g(T{...}) — or around it — co_return T{co_await x}."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
BAD_WRAP = re.compile(r"co_return[^;{}]*\{[^;]*co_await")


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
    for m in BAD_WRAP.finditer(text):
        found.append(text.count("\n", 0, m.start()) + 1)
    return found


def main():
    bad = []
    for path in sorted(ROOT.glob("**/*.[ch]pp")):
        if "build" in path.relative_to(ROOT).parts:
            continue
        bad += [f"{path.relative_to(ROOT)}:{line}" for line in violations(path)]
    if bad:
        print("braced temporaries in co_await expressions (g++ 12 miscompiles them):")
        print("\n".join(bad))
        return 1
    print("coroutine lint: clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
