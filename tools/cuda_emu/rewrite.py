"""The mechanical rewrite that lets g++ compile a ``.cu`` file against ``cuda_emu.h`` (tools/cuda_emu/README.md).

Three rewrites, each kept on the original lines (a ``#line`` directive names the original file, so compiler
errors and the emulator's barrier messages point at the real ``.cu`` line):

* ``kernel<<<grid, block[, smem[, stream]]>>>(args)``  ->  ``::emu::launch(::emu::config(grid, block, ...),
  kernel, args)`` (``kernel`` may be a template specialisation such as ``susa_stripe_kernel<T>``);
* ``extern __shared__ T name[];``  ->  ``T* const name = ::emu::dynamic_shared<T>();``
* ``__shared__ T name[A][B];``  ->  ``auto& name = ::emu::block_shared<T[A][B]>("file:line:name");``
  (one object per block, shared by its threads).

Anything the rewrite does not understand (a ``__shared__`` or ``<<<`` left over) is an error, never passed through.
Usage: ``python rewrite.py in.cu out.cpp``.
"""
import re
import sys

_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:<>\s]*?)\s+"
                            r"([A-Za-z_]\w*)\s*\[\s*\]\s*;")
_STATIC_SHARED = re.compile(r"__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:<>]*)\s+([A-Za-z_]\w*)\s*"
                            r"((?:\[[^\]\n]+\]\s*)*);")


def _match_back(text, end, open_ch, close_ch):
    """Index of the ``open_ch`` matching the ``close_ch`` at ``text[end]``."""
    depth = 0
    for i in range(end, -1, -1):
        if text[i] == close_ch:
            depth += 1
        elif text[i] == open_ch:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {open_ch}{close_ch} before offset {end}")


def _match_forward(text, start, open_ch, close_ch):
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {open_ch}{close_ch} after offset {start}")


def _rewrite_launches(text):
    out = []
    pos = 0
    while True:
        at = text.find("<<<", pos)
        if at < 0:
            out.append(text[pos:])
            return "".join(out)
        # the kernel expression: an identifier (with ::) and optional template arguments, right before <<<
        k_end = at
        while k_end > 0 and text[k_end - 1].isspace():
            k_end -= 1
        k_start = k_end
        if text[k_start - 1] == ">":
            k_start = _match_back(text, k_start - 1, "<", ">")
        while k_start > 0 and (text[k_start - 1].isalnum() or text[k_start - 1] in "_:"):
            k_start -= 1
        kernel = text[k_start:k_end]
        if not re.match(r"^[A-Za-z_:][\w:]*(<.*>)?$", kernel, re.S):
            raise ValueError(f"cannot parse the kernel name before <<< at offset {at}: {kernel!r}")
        cfg_end = text.find(">>>", at)
        if cfg_end < 0:
            raise ValueError(f"<<< without >>> at offset {at}")
        cfg = text[at + 3:cfg_end]
        p = cfg_end + 3
        while text[p].isspace():
            p += 1
        if text[p] != "(":
            raise ValueError(f"expected the argument list after >>> at offset {p}")
        close = _match_forward(text, p, "(", ")")
        args = text[p + 1:close]
        gap = text[cfg_end + 3:p]  # whitespace (newlines) between >>> and (
        sep = ", " if args.strip() else ""
        out.append(text[pos:k_start])
        out.append(f"::emu::launch(::emu::config({cfg}),{gap} {kernel}{sep}{args})")
        pos = close + 1


def rewrite(text, filename):
    def extern_shared(m):
        return f"{m.group(1).strip()}* const {m.group(2)} = ::emu::dynamic_shared<{m.group(1).strip()}>();"

    def static_shared(m):
        line = m.string.count("\n", 0, m.start()) + 1  # the rewrites keep the lines, so this is the .cu line
        dims = re.sub(r"\s+", " ", m.group(3)).strip()
        key = f"{filename}:{line}:{m.group(2)}"
        return f'auto& {m.group(2)} = ::emu::block_shared<{m.group(1)}{dims}>("{key}");'

    body = _EXTERN_SHARED.sub(extern_shared, text)
    body = _STATIC_SHARED.sub(static_shared, body)
    body = _rewrite_launches(body)
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", body, flags=re.S)  # comments may mention the syntax
    for leftover in ("__shared__", "<<<", ">>>"):
        if leftover in code:
            line = code[:code.index(leftover)].count("\n") + 1
            raise ValueError(f"{filename}:{line}: {leftover} left after the rewrite (unsupported form)")
    return f'#line 1 "{filename}"\n' + body


def main(argv):
    src, dst = argv[1], argv[2]
    with open(src) as f:
        text = f.read()
    out = rewrite(text, src)
    if out.count("\n") != text.count("\n") + 1:
        raise SystemExit(f"rewrite.py: the rewrite of {src} changed the number of lines")
    with open(dst, "w") as f:
        f.write(out)


if __name__ == "__main__":
    main(sys.argv)
