#!/usr/bin/python3
"""md2man — one Markdown source → one man(7) page, for `make man` (build/man/).

Why a script of our own and not pandoc: the pages use a small Markdown subset (the one our docs
are written in), python3 is already a build dependency while pandoc would add a large toolchain
for three pages, and the output is stable across distributions: the test renders every page
with `groff -man -ww -z` and `man --warnings` and wants no warning at all.

The subset:
  # name(section) -- one-line description     the title (ronn style); else --name/--section/
                                              --description give it (a doc's own H1 is dropped)
  ## Heading / ### Sub-heading                .SH (upper-cased) / .SS
  paragraphs, `code`, **bold**, *italic*, [text](link) (the text is kept)
  - item / 1. item                            .IP lists (continuation lines indented)
  term                                        a tagged paragraph (.TP): a line followed by a
  : description                               line starting with ": " (pandoc's definition list)
  | a | b | c |  (GFM table)                  one .TP per row: the first cell is the term, the
                                              others "header: value" (the last one as text)
  ```  fenced code  ```                       .nf/.fi, indented

Usage: md2man.py SOURCE.md [--name N --section S --description D] [--stop-at HEADING]
                 [--see-also TEXT] [--version V] > page.S
"""
import argparse
import re
import sys

# Characters our docs use that groff's default (ps) device may not have as UTF-8 input: named
# glyphs or plain ASCII; anything else becomes \[uXXXX].
GLYPHS = {"…": "...", "—": r"\(em", "–": r"\(en", "→": r"\(->", "←": r"\(<-", "≤": r"\(<=",
          "≥": r"\(>=", "×": r"\(mu", "±": r"\(+-", "²": r"\(S2", "³": r"\(S3", "“": r"\(lq",
          "”": r"\(rq", "‘": r"\(oq", "’": r"\(cq", "•": r"\(bu", "§": r"\(sc", "°": r"\(de",
          "ü": r"\(:u", "ö": r"\(:o", "ä": r"\(:a", "é": r"\('e"}


def esc(text: str) -> str:
    """Plain text → roff: backslashes, non-ASCII characters."""
    out = []
    for ch in text.replace("\\", r"\e"):
        if ord(ch) < 128:
            out.append(ch)
        else:
            out.append(GLYPHS.get(ch, r"\[u%04X]" % ord(ch)))
    return "".join(out)


def inline(text: str) -> str:
    """Markdown inline markup → roff font escapes. Code spans first: nothing inside them is
    markup; their hyphens are real minus signs (options, paths)."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for p in parts:
        if len(p) >= 2 and p.startswith("`") and p.endswith("`"):
            # After ':' a break may go (\:, no hyphen): cipher lists are one long token.
            code = esc(p[1:-1]).replace("-", r"\-").replace(":", r":\:")
            out.append(r"\fB" + code + r"\fR")
            continue
        p = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", p)  # links: keep the text
        p = esc(p)
        p = re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", p)
        p = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\\fI\1\\fR", p)
        out.append(p)
    return "".join(out)


def line_out(text: str) -> str:
    """A text line that must not be read as a request."""
    return "\\&" + text if text[:1] in (".", "'") else text


def cells(row: str) -> list:
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|"):
        row = row[:-1]
    # a pipe inside a code span (`a|b`) is not a separator
    out, cur, code = [], "", False
    for ch in row:
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def convert(src: str, args) -> str:
    lines = src.splitlines()
    out = []
    title = None
    i = 0
    if lines and lines[0].startswith("# "):
        m = re.match(r"#\s+([\w.\-]+)\((\d)\)\s+--\s+(.*)", lines[0])
        if m:
            title = m.groups()
        i = 1
    name, section, desc = title or (args.name, args.section, args.description)
    if not (name and section and desc):
        sys.exit("md2man: no '# name(section) -- description' line and no --name/--section/"
                 "--description")
    out.append('.TH "%s" "%s" "" "Portcullis %s" "Portcullis Manual"'
               % (name.upper(), section, args.version))
    # No hyphenation: key names and paths (limits.drain_timeout) must stay searchable.
    out += [".nh", ".ad l"]
    out += [".SH NAME", "%s \\- %s" % (esc(name).replace("-", r"\-"), inline(desc))]
    # Text before the first section (a doc's introduction) is the DESCRIPTION.
    rest = [x for x in lines[i:] if x.strip()]
    if rest and not rest[0].startswith("## "):
        out.append(".SH DESCRIPTION")
    para: list = []
    seen_see_also = False

    def flush():
        if para:
            out.append(".PP")
            out.extend(line_out(inline(x)) for x in para)
            para.clear()

    while i < len(lines):
        ln = lines[i]
        s = ln.strip()
        if s.startswith("## ") or s.startswith("### ") or s.startswith("# "):
            flush()
            level = len(s) - len(s.lstrip("#"))
            head = s.lstrip("#").strip()
            if args.stop_at and head.startswith(args.stop_at):
                break
            if level <= 2:
                text = head.upper() if "`" not in head else head
                seen_see_also |= text == "SEE ALSO"
                out.append('.SH "%s"' % inline(text).replace('"', r"\(dq"))
            else:
                out.append('.SS "%s"' % inline(head).replace('"', r"\(dq"))
            i += 1
        elif s.startswith("```"):
            flush()
            i += 1
            out += [".PP", ".RS 4", ".nf"]
            while i < len(lines) and not lines[i].strip().startswith("```"):
                out.append(line_out(esc(lines[i]).replace("-", r"\-")))
                i += 1
            out += [".fi", ".RE"]
            i += 1
        elif s.startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[\s:|-]+\|\s*$",
                                                                    lines[i + 1]):
            flush()
            head = cells(s)
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                row = cells(lines[i])
                row += [""] * (len(head) - len(row))
                out += [".TP", line_out(inline(row[0]))]
                attrs = ["%s: %s" % (inline(h), inline(v)) for h, v in zip(head[1:-1], row[1:-1])
                         if v]
                if attrs:
                    out.append(line_out("; ".join(attrs) + "."))
                    if len(head) > 2 and row[-1]:
                        out.append(".br")
                if len(head) > 1 and row[-1]:
                    out.append(line_out(inline(row[-1]) if len(head) > 2 else
                                        "%s: %s" % (inline(head[-1]), inline(row[-1]))))
                i += 1
        elif re.match(r"^(\s*)([-*]|\d+\.)\s+", ln) and not para:
            m = re.match(r"^(\s*)([-*]|\d+\.)\s+(.*)", ln)
            mark = r"\(bu" if m.group(2) in "-*" else m.group(2)
            item = [m.group(3)]
            i += 1
            while i < len(lines) and lines[i].startswith("  ") and lines[i].strip() and \
                    not re.match(r"^\s*([-*]|\d+\.)\s+", lines[i]):
                item.append(lines[i].strip())
                i += 1
            out += [".IP %s 4" % mark] + [line_out(inline(x)) for x in item]
        elif s and i + 1 < len(lines) and lines[i + 1].startswith(": "):
            flush()
            out += [".TP", line_out(inline(s))]
            i += 1
            while i < len(lines) and (lines[i].startswith(": ") or
                                      (lines[i].startswith("  ") and lines[i].strip())):
                out.append(line_out(inline(lines[i][2:].strip())))
                i += 1
        elif not s:
            flush()
            i += 1
        else:
            para.append(s)
            i += 1
    flush()
    if args.see_also and not seen_see_also:
        out += [".SH \"SEE ALSO\"", inline(args.see_also)]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source")
    ap.add_argument("--name")
    ap.add_argument("--section")
    ap.add_argument("--description")
    ap.add_argument("--stop-at", help="drop this section (a heading prefix) and what follows")
    ap.add_argument("--see-also")
    ap.add_argument("--version", default="")
    args = ap.parse_args()
    with open(args.source, encoding="utf-8") as f:
        sys.stdout.write(convert(f.read(), args))


if __name__ == "__main__":
    main()
