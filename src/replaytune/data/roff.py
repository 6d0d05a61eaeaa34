"""Roff (man(7) and mdoc(7)) markup to readable plain text, for the man-page corpus.

Not a typesetter: it keeps the words a reader sees and drops layout. Request lines
(``.PP``, ``.sp``, ``.nf``, ``.Bl``...) vanish, paragraph requests leave a blank line, text
macros (``.B``, ``.BR``, ``.SH``, mdoc ``.Fl``/``.Ar``/``.Xr``...) keep their arguments,
macro and string definitions (``.de``/``.ig`` ... ``..``) and comments are skipped, and
escapes are resolved: fonts and sizes removed, ``\\-`` to ``-``, named glyphs such as
``\\(em`` to their characters. A page that only sources another (``.so``) is an alias and
yields nothing.
"""

from __future__ import annotations

import re

_GLYPHS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": "\u201c", "rq": "\u201d",
    "oq": "\u2018", "cq": "\u2019", "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122", "ga": "`",
    "ti": "~", "ha": "^", "ba": "|", "bv": "|", "rs": "\\", "sl": "/", ">=": "\u2265", "<=": "\u2264",
    "!=": "\u2260", "mu": "\u00d7", "de": "\u00b0", "aa": "\u00b4", "Fo": "\u00ab", "Fc": "\u00bb",
    "->": "\u2192", "<-": "\u2190", "pl": "+", "eq": "=", "ul": "_", "lB": "[", "rB": "]", "at": "@",
    "sh": "#", "Do": "$", "ct": "\u00a2", "ua": "\u2191", "da": "\u2193", "pc": "\u00b7", "+-": "\u00b1",
    "R": "\u00ae", "Tm": "\u2122", "Lq": "\u201c", "Rq": "\u201d",
}
_PARA = {"PP", "LP", "P", "sp", "Pp", "Lp", "HP", "br"}
_SKIP = {"EQ", "EN", "ds", "nr", "TH", "Dd", "Dt", "Os", "tr", "ie", "el", "if", "Bl", "El", "Bd", "Rs", "Re",
         "Sm", "Bk", "Ek", "RS", "RE", "UE", "ME", "YS", "ft", "ps", "vs", "ll", "in", "ti", "ne", "ad", "na", "hy",
         "nh", "ce", "so", "mso", "cc", "ta", "fam", "hw", "ns", "rs", "PD", "DT", "IX", "ul", "cu", "bp", "pl"}
_ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB"}
# mdoc macros that may appear inside a line and are dropped (their arguments kept).
_MDOC_INLINE = {
    "Ar", "Cm", "Ic", "Li", "Sy", "Em", "Dv", "Er", "Ev", "Va", "Fn", "Fa", "Ft", "Pa", "No", "Ql", "Ux", "Tn",
    "Dq", "Qq", "Sq", "Pq", "Aq", "Bq", "Brq", "Ta", "Lk", "Mt", "Vt", "Xo", "Xc", "Ad", "An", "At", "Bx", "Cd",
    "Fx", "Nx", "Ox", "Bsx", "Dx", "St", "Ms", "Sx", "Ic", "In", "Fd", "Ot", "Lb", "Rv", "Ex", "Em",
}
_ESCAPE = re.compile(
    r"\\(?:"
    r"f(?:\[[^\]]*\]|\(..|.)"  # font
    r"|s[+-]?(?:\(\d\d|\[\d+\]|\d)"  # size
    r"|[hvwlLoXZDNbxR]'[^']*'"  # motions, width, drawing, device control
    r"|[nk*gmMFYV](?:\[[^\]]*\]|\(..|.)"  # registers, strings, colors (strings resolved below)
    r"|z."  # zero-width char
    r"|[,/&:%|^)c!{}ptdru0 ~\-\\e.'`\"]"  # one-character escapes
    r"|\(..|\[[^\]]*\]"  # glyphs
    r"|."  # anything else: dropped
    r")",
    re.DOTALL,
)


def _escape(m: re.Match) -> str:
    s = m.group(0)[1:]
    c = s[0]
    if c == "-":
        return "-"
    if c in " ~0":
        return " "
    if c in "e\\":
        return "\\"
    if c in ".'`":
        return {".": ".", "'": "'", "`": "`"}[c]
    if c == "(":
        return _GLYPHS.get(s[1:3], "")
    if c == "[":
        return _GLYPHS.get(s[1:-1], "")
    if c == "*":
        name = s[2:4] if s[1] == "(" else s[2:-1] if s[1] == "[" else s[1]
        return _GLYPHS.get(name, "")
    return ""


def unescape(text: str) -> str:
    """Resolve roff escapes in one line of text (a trailing ``\\"`` comment is dropped)."""
    i = text.find('\\"')
    while i >= 0 and i > 0 and text[i - 1] == "\\" and (i < 2 or text[i - 2] != "\\"):
        i = text.find('\\"', i + 2)
    if i >= 0:
        text = text[:i]
    return _ESCAPE.sub(_escape, text)


def _args(rest: str) -> list[str]:
    """Split macro arguments: spaces separate, double quotes group, "" is a literal quote."""
    out, cur, quoted, i, any_ = [], [], False, 0, False
    while i < len(rest):
        ch = rest[i]
        if quoted:
            if ch == '"':
                if i + 1 < len(rest) and rest[i + 1] == '"':
                    cur.append('"')
                    i += 1
                else:
                    quoted = False
            else:
                cur.append(ch)
        elif ch == '"':
            quoted, any_ = True, True
        elif ch in " \t":
            if cur or any_:
                out.append("".join(cur))
            cur, any_ = [], False
        else:
            cur.append(ch)
        i += 1
    if cur or any_:
        out.append("".join(cur))
    return out


def _mdoc(macro: str, args: list[str], name: str) -> str:
    words: list[str] = []
    glue = False

    def add(word: str) -> None:
        nonlocal glue
        if glue and words:
            words[-1] += word
        else:
            words.append(word)
        glue = False

    toks = [macro] + args
    i = 0
    while i < len(toks):
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) and toks[i + 1] not in _MDOC_INLINE else ""
        if t == "Ns":
            glue = True
        elif t in ("Fl", "Nm"):
            add(("-" + nxt) if t == "Fl" else (nxt or name))
            i += 1 if nxt else 0
        elif t == "Xr" and i + 2 < len(toks):
            add(f"{toks[i + 1]}({toks[i + 2]})")
            i += 2
        elif t in ("Op", "Oo"):
            add("[")
            glue = True
        elif t == "Oc":
            glue = True
            add("]")
        elif t == "Ux":
            add("UNIX")
        elif t in _MDOC_INLINE or t in ("It", "Sh", "Ss", "Nd", "Dl", "Bl", "El"):
            pass
        elif t in (".", ",", ";", ":", ")", "]"):
            glue = True
            add(t)
        else:
            add(t)
        i += 1
    if macro == "Op":
        glue = True
        add("]")
    return " ".join(w for w in words if w)


def roff_to_text(src: str) -> str:
    """Plain text of a man page in man(7) or mdoc(7) markup ('' for a ``.so`` alias).

    Text lines are filled (joined with spaces into paragraphs) as roff does, except in
    no-fill blocks (``.nf``/``.EX``/``.Bd -literal``), headings and list tags, which keep
    their own lines.
    """
    items: list[tuple[str, str]] = []  # (text, kind): kind is fill, line or blank
    skip_until_dots = False
    name = ""
    nofill = False
    in_table = table_format = False
    tag_next = False

    def text(t: str, kind: str = "fill") -> None:
        nonlocal tag_next
        if tag_next and kind == "fill":
            kind, tag_next = "line", False
        items.append((t, "line" if nofill and kind == "fill" else kind))

    for raw in src.splitlines():
        line = raw.rstrip()
        if skip_until_dots:
            if line.startswith(".."):
                skip_until_dots = False
            continue
        if line.startswith((".", "'")) and len(line) > 1:
            body = line[1:].lstrip()
            if body.startswith('\\"') or not body:
                continue
            parts = body.split(None, 1)
            macro, rest = parts[0], (parts[1] if len(parts) > 1 else "")
            if macro == "so":
                return ""
            if macro in ("de", "de1", "am", "ig"):
                skip_until_dots = True
                continue
            if macro == "TS":
                in_table = table_format = True
                continue
            if macro == "TE":
                in_table = False
                continue
            if macro in ("nf", "EX") or (macro == "Bd" and ("-literal" in rest or "-unfilled" in rest)):
                nofill = True
                items.append(("", "break"))
                continue
            if macro in ("fi", "EE", "Ed"):
                nofill = False
                items.append(("", "break"))
                continue
            if macro in _SKIP or macro.startswith("%"):
                continue
            if macro in _PARA:
                items.append(("", "blank" if macro != "br" else "break"))
                continue
            if macro in ("TP", "TQ"):
                items.append(("", "blank" if macro == "TP" else "break"))
                tag_next = True
                continue
            args = _args(rest)
            if macro in _ALTERNATING:
                text(unescape("".join(args)))
            elif macro in ("SH", "SS", "Sh", "Ss"):
                items.append(("", "blank"))
                t = unescape(" ".join(args))
                text(t, "line")
            elif macro in ("B", "I", "SM", "SB", "UR", "MT", "SY", "Dl"):
                text(unescape(" ".join(args)))
            elif macro == "OP":
                text(f"[{unescape(' '.join(args))}]")
            elif macro == "IP":
                items.append(("", "blank"))
                if args and args[0]:
                    text(unescape(args[0]), "line")
            elif macro == "It":
                items.append(("", "break"))
                text(unescape(_mdoc(macro, args, name)), "line")
            elif macro == "Nm" and not name and args:
                name = unescape(args[0])
                text(name)
            elif macro == "Nd":
                text("\u2014 " + unescape(_mdoc(macro, args, name)))
            elif len(macro) in (2, 3) and macro[0].isupper() and macro[1:].islower():
                text(unescape(_mdoc(macro, args, name)))
            continue
        if in_table:
            if table_format:
                table_format = not line.endswith(".")
                continue
            text(unescape(line.replace("T{", "").replace("T}", "").replace("\t", "  ")), "line")
            continue
        if not line.strip() and not nofill:
            items.append(("", "blank"))
            continue
        text(unescape(line))
    return _assemble(items)


def _assemble(items: list[tuple[str, str]]) -> str:
    out: list[str] = []
    cur: str | None = None
    for t, kind in items:
        if kind == "fill":
            if t.strip():
                cur = t.strip() if cur is None else f"{cur} {t.strip()}"
            continue
        if cur is not None:
            out.append(cur)
            cur = None
        if kind == "line":
            out.append(t)
        elif kind == "blank" and out and out[-1] != "":
            out.append("")
    if cur is not None:
        out.append(cur)
    text = "\n".join(x.rstrip() for x in out).strip()
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text + "\n" if text else ""
