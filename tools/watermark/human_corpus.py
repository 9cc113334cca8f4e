#!/usr/bin/python3
"""Build a corpus of human-written English paragraphs from extracted Debian packages.

The watermark evaluation needs texts that no model wrote, to measure how often the detector
fires on them (false positives). make_human_corpus.sh downloads and unpacks the packages;
this script turns their documentation sources into clean prose paragraphs.

  human_corpus.py --packages          print the package names, one a line (the shell script
                                      downloads exactly these)
  human_corpus.py [--max-total N] WORKDIR OUTDIR
                                      read WORKDIR/packages.txt and WORKDIR/x/PKG/, write
                                      OUTDIR/human.jsonl and OUTDIR/versions.txt, print a summary;
                                      N (default 20000, 0 = no limit) bounds the number of texts

Each output line is {"text": ..., "source": "package/version:/path/in/package"}. Lines are
ordered by source and then by position in the file, so the same package versions always give
the same bytes. Only the standard library is used, so the cleaning runs anywhere /usr/bin/python3
does; the functions are small and pure so human_corpus_test.py can check them without downloads.

The packages are deliberately disjoint from the model's training text (python3.11-doc,
fortunes, fortunes-min, debian-reference-en) and from the held-out perplexity text
(jargon-text); see tools/train/fetch_text.sh.
"""
import glob
import gzip
import hashlib
import html
import html.entities
import html.parser
import json
import os
import re
import sys
import unicodedata

# Paragraphs shorter than this are mostly captions, headings that slipped through or one-line
# notes; longer ones are rare and would dwarf a 200-token generation in a comparison.
MIN_WORDS = 40
MAX_WORDS = 400
# No package may provide more than this share of the corpus, so that the false-positive rate
# is not really the rate of one writing style; the cap is relaxed only when it would leave
# fewer than MIN_TOTAL texts.
MAX_SHARE = 0.5
MIN_TOTAL = 10000
# The evaluation needs about this many; beyond it the largest packages are cut down first (see
# package_limits), which keeps the corpus balanced. --max-total 0 keeps everything.
MAX_TOTAL = 20000

# Packages that must never be used: the training text and the held-out text.
FORBIDDEN = {"python3.11-doc", "fortunes", "fortunes-min", "debian-reference-en", "jargon-text"}


# ---------------------------------------------------------------------------------------------
# Generic text helpers

def read(path):
    """The file as text; .gz files are decompressed. Invalid UTF-8 becomes U+FFFD, which the
    prose filter later rejects, rather than crashing on one odd file."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def unwrap(lines):
    """Join hard-wrapped lines into one paragraph. Line-end hyphens are kept as they are,
    because documentation wraps at compound words ("run-\\ntime") as often as it splits words,
    and guessing wrong would invent words a human did not write."""
    return " ".join(l.strip() for l in lines if l.strip())


_SPACES = re.compile(r"\s+")


def normalise(text):
    """NFC, no control characters, every run of white space (including no-break spaces) one
    ASCII space, no leading or trailing space."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Zs", "Zl", "Zp") else c
                   for c in text if unicodedata.category(c) != "Cf")
    return _SPACES.sub(" ", text).strip()


def word_count(text):
    return len(text.split())


# A small set of English function words: real English prose has many of them, code, tables
# and other languages (the Debian Handbook and the kernel docs ship translations) have few.
_FUNCTION_WORDS = frozenset("""
a an the and or but if of to in on at by for with from as is are was were be been being it its
this that these those which who what when where how not no can will would should may might must
do does did has have had there their they them than then so such into out up about over more
most other some any all each also only you your we our he she his her one""".split())

# A paragraph that starts with one of these in lower case continues a sentence begun before a
# removed code block or list ("where x is ...", "and then ..."): a fragment, not a paragraph.
_CONTINUATIONS = _FUNCTION_WORDS | frozenset("""
where whereas while since although though unless until whose whereby thus hence because
except then called means plus otherwise instead""".split())

# Licence notices are legal boilerplate copied verbatim into thousands of files, not prose
# someone wrote for this text.
_BOILERPLATE = re.compile(r"WITHOUT ANY WARRANTY|AS IS\W+AND ANY EXPRESS|redistribute it and/or "
                          r"modify|Permission is (hereby )?granted to (use|copy)", re.I)

_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")
_CODE_CHARS = set("{}[]<>=|\\^~`#$@*_;")


def looks_like_prose(text):
    """True for running English prose; False for code, tables, lists of identifiers, URLs,
    lines of symbols, other languages and fragments that stop mid-sentence."""
    if "\ufffd" in text:
        return False
    if not _SENTENCE_END.search(text):
        return False   # a heading, a caption, or text that led into a removed code block
    if text[0] in "-*+#>|=:;,.)]}":
        return False   # starts like a list item, a quote marker, or the tail of something cut
    if _BOILERPLATE.search(text):
        return False
    first = text.split(None, 1)[0].rstrip(",;:")
    if first.islower() and first in _CONTINUATIONS:
        return False
    chars = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    if letters < 0.78 * len(chars):
        return False   # numbers, symbols and punctuation dominate: a table, code or a dump
    if sum(c in _CODE_CHARS for c in chars) > 0.02 * len(chars):
        return False   # braces, operators and markup left-overs: code or unconverted markup
    if sum(c.isalpha() and not c.isascii() for c in chars) > 0.03 * max(letters, 1):
        return False   # accented letters everywhere: not English
    words = [w.strip(".,;:!?\"'()[]").lower() for w in text.split()]
    if sum(w in _FUNCTION_WORDS for w in words) < 0.18 * len(words):
        return False   # too few function words: an identifier list or another language
    if sum(("://" in w or w.startswith("www.")) for w in words) > 2:
        return False   # mostly a list of links
    return True


def keep(text):
    """The length and prose filter every candidate paragraph goes through."""
    return MIN_WORDS <= word_count(text) <= MAX_WORDS and looks_like_prose(text)


def dedup(items):
    """Drop exact repeats of a text, keeping the first occurrence. Items are tuples whose last
    element is the text; the survivors stay in the order given."""
    seen, out = set(), []
    for it in items:
        if it[-1] not in seen:
            seen.add(it[-1])
            out.append(it)
    return out


# ---------------------------------------------------------------------------------------------
# reStructuredText (the kernel's Documentation/ sources)

_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}\s*$")
_SIMPLE_TABLE = re.compile(r"^\s*=+(\s+=+)+\s*$")
_GRID_TABLE = re.compile(r"^\s*(\+[-=+]+\+|\|.*\|)\s*$")
_RST_LIST = re.compile(r"^\s*([-*+\u2022]\s|#[.)]\s|\d+[.)]\s|\(?[A-Za-z0-9]\)\s|[A-Za-z][.)]\s"
                       r"|--?[A-Za-z0-9]|:[^:\s][^:]*:(\s|$)|\||>>>)")
_RST_DIRECTIVE = re.compile(r"^\s*\.\.(\s|$)")


def _indent(line):
    return len(line) - len(line.lstrip(" "))


def rst_inline(text):
    """Strip inline reStructuredText markup, keeping the words a reader sees."""
    # Interpreted text with a role, :c:func:`kmalloc` or :ref:`the guide <label>`: the title
    # if there is one, else the target without a leading "~" or "!".
    text = re.sub(r":[A-Za-z][\w:+.-]*:`([^`]*)`", lambda m: "`" + m.group(1) + "`", text)
    text = re.sub(r"``(.+?)``", r"\1", text)
    text = re.sub(r"`([^`<]*?)\s*<[^`>]*>`_{0,2}", r"\1", text)      # `title <target>`_
    text = re.sub(r"`[~!]?([^`]+)`_{0,2}", r"\1", text)               # `ref`_ or `text`
    text = re.sub(r"\[(#[\w-]*|\*|\d+|[A-Za-z][\w.-]*)\]_", "", text)  # footnote references
    text = re.sub(r"\*\*(\S(?:.*?\S)?)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*])\*(\S(?:[^*]*?\S)?)\*(?![\w*])", r"\1", text)
    text = re.sub(r"\|([\w][\w .-]*)\|_{0,2}", r"\1", text)           # |substitution|
    text = re.sub(r"\b(\w+)__?(?=[\s.,;:!?)]|$)", r"\1", text)        # reference_
    text = text.replace("\\ ", "")
    text = re.sub(r"\\(.)", r"\1", text)
    return text


def rst_paragraphs(text):
    """Prose paragraphs of an .rst file, in order.

    Dropped: headings (with their over- and underlines), directives and comments with their
    indented bodies (code-block, kernel-doc, toctree, tables, SPDX lines), literal blocks after
    "::", tables, bullet/enumerated/field/option lists with their continuation paragraphs, and
    definition-list terms (their definitions are prose and are kept).
    """
    lines = text.replace("\r\n", "\n").expandtabs(8).split("\n")
    # Headings first: an adornment line blanks itself and the title line above it, so a
    # paragraph that follows a title without a blank line is still found.
    for i, line in enumerate(lines):
        if _ADORNMENT.match(line):
            lines[i] = ""
            if i > 0 and lines[i - 1].strip() and not _ADORNMENT.match(lines[i - 1]):
                lines[i - 1] = ""
    # Blocks of consecutive non-blank lines.
    blocks, cur = [], []
    for line in lines + [""]:
        if line.strip():
            cur.append(line)
        elif cur:
            blocks.append(cur)
            cur = []

    out = []
    skip_deeper_than = None   # while set, blocks indented more than this belong to a dropped block
    for block in blocks:
        ind = _indent(block[0])
        if skip_deeper_than is not None:
            if ind > skip_deeper_than:
                continue
            skip_deeper_than = None
        first = block[0]
        if _RST_DIRECTIVE.match(first) or _RST_LIST.match(first):
            skip_deeper_than = ind
            continue
        if any(_SIMPLE_TABLE.match(l) or _GRID_TABLE.match(l) for l in block):
            continue
        body = block
        if len(block) > 1 and _indent(block[1]) > ind:
            # A definition list item: the first line is the term (often an option or a file
            # name), the indented lines are its definition.
            body = block[1:]
            if not body[0].lstrip()[:1].isupper():
                continue   # "specifies the ...": reads only as the end of the term's sentence
            if any(_indent(l) != _indent(body[0]) for l in body):
                continue   # something more structured than a definition
        elif any(_indent(l) != ind for l in block):
            continue       # ragged indentation: a hand-made table or layout
        literal_follows = body[-1].rstrip().endswith("::")
        para = unwrap(body)
        if literal_follows:
            # "Text::" renders as "Text:" and " ::" alone renders as nothing; the indented
            # blocks that follow are code.
            skip_deeper_than = ind
            para = re.sub(r"\s*::$", "", para) if re.search(r"\s::$", para) else para[:-1]
        para = normalise(rst_inline(para))
        if para:
            out.append(para)
    return out


# ---------------------------------------------------------------------------------------------
# POD (the Perl manuals)

_POD_CODE = re.compile(r"([A-Z])(<+)")


def _pod_apply(code, inner):
    """The visible text of one formatting code with its (already expanded) contents."""
    if code in "XZ":
        return ""                  # index entries and null codes are invisible
    if code == "E":
        name = inner.strip()
        fixed = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}
        if name in fixed:
            return fixed[name]
        try:
            if name.lower().startswith("0x"):
                return chr(int(name, 16))
            if name.startswith("0") and len(name) > 1:
                return chr(int(name, 8))
            if name.isdigit():
                return chr(int(name))
        except (ValueError, OverflowError):
            return ""
        return chr(html.entities.name2codepoint[name]) if name in html.entities.name2codepoint else ""
    if code == "L":
        # L<text|target> shows text; L<name/"section"> shows 'section in name'; L</section>
        # shows the section; L<name> the name.
        if "|" in inner:
            return inner.split("|", 1)[0]
        if "://" in inner:
            return inner
        name, slash, section = inner.partition("/")
        section = section.strip('"')
        if slash and name and section:
            return f"\"{section}\" in {name}"
        return section if slash else name.strip('"')
    return inner                   # B, I, C, F, S: the text itself


def _pod_parse(s, i, close):
    """Expand formatting codes in s from i until the closing string close (None: the end).
    Returns (text, index after the close)."""
    out = []
    while i < len(s):
        if close is not None and s.startswith(close, i):
            return "".join(out), i + len(close)
        m = _POD_CODE.match(s, i)
        if m:
            code, n = m.group(1), len(m.group(2))
            if n == 1:
                inner, j = _pod_parse(s, m.end(), ">")
                out.append(_pod_apply(code, inner))
                i = j
                continue
            # C<< ... >>: contents end at the first run of as many ">" preceded by space.
            end = re.compile(r"\s" + ">" * n).search(s, m.end())
            if end:
                inner, _ = _pod_parse(s[m.end():end.start()].strip(), 0, None)
                out.append(_pod_apply(code, inner))
                i = end.end()
                continue
        out.append(s[i])
        i += 1
    return "".join(out), i


def pod_inline(text):
    return _pod_parse(text, 0, None)[0]


def pod_paragraphs(text):
    """Ordinary (prose) paragraphs of a POD document, in order. Command paragraphs (=head,
    =item, =over ...), verbatim (indented, i.e. code) paragraphs, =begin/=end and =for
    regions and anything outside POD (before the first command or after =cut) are dropped."""
    out = []
    in_pod, in_begin = False, 0
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        block = block.strip("\n")
        if not block.strip():
            continue
        if block.startswith("="):
            cmd = block.split(None, 1)[0]
            if cmd == "=cut":
                in_pod = False
            else:
                in_pod = True
                if cmd == "=begin":
                    in_begin += 1
                elif cmd == "=end":
                    in_begin = max(0, in_begin - 1)
            continue
        if not in_pod or in_begin or block[0] in " \t":
            continue
        para = normalise(pod_inline(unwrap(block.split("\n"))))
        if para:
            out.append(para)
    return out


# ---------------------------------------------------------------------------------------------
# HTML (DocBook output of the Debian Handbook and the PostgreSQL manual)

class _ParagraphCollector(html.parser.HTMLParser):
    """Collects the text of paragraphs (<p>, and <div class="para">) that are not inside
    code, tables, navigation or list items, one string per paragraph."""

    # Whose contents are never prose: code, tables, page furniture, footnote markers.
    SKIP_TAGS = {"pre", "table", "script", "style", "head", "nav", "svg", "math", "sup",
                 "textarea", "select", "li"}
    SKIP_CLASSES = {"navheader", "navfooter", "toc", "sphinxsidebar", "related", "footer",
                    "header", "breadcrumb", "footnotes", "titlepage", "legalnotice", "index",
                    "highlight", "programlisting", "screen", "synopsis", "cmdsynopsis",
                    "funcsynopsis"}
    # A block-level start or end tag ends any open paragraph, as browsers do.
    BLOCK_TAGS = {"p", "div", "pre", "table", "ul", "ol", "dl", "dt", "dd", "li", "blockquote",
                  "h1", "h2", "h3", "h4", "h5", "h6", "section", "body", "hr", "figure"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs = []
        self.buf = None            # text of the open <p>, or None
        self.skip_tag = None       # tag whose region is being skipped
        self.skip_depth = 0        # nesting of that tag inside the skipped region

    def _flush(self):
        if self.buf is not None:
            para = normalise("".join(self.buf))
            if para:
                self.paragraphs.append(para)
        self.buf = None

    def handle_starttag(self, tag, attrs):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        if tag in self.BLOCK_TAGS:
            self._flush()
        classes = set((dict(attrs).get("class") or "").split())
        if tag in self.SKIP_TAGS or classes & self.SKIP_CLASSES:
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag == "p" or (tag == "div" and "para" in classes):
            # Publican (the Handbook's tool chain) writes paragraphs as <div class="para">.
            self.buf = []
        elif tag == "br" and self.buf is not None:
            self.buf.append(" ")

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in self.BLOCK_TAGS:
            self._flush()

    def handle_data(self, data):
        if self.skip_tag is None and self.buf is not None:
            self.buf.append(data)


def html_paragraphs(text):
    """Prose paragraphs (<p> elements) of an HTML page, in document order."""
    parser = _ParagraphCollector()
    parser.feed(text)
    parser.close()
    parser._flush()
    return parser.paragraphs


# ---------------------------------------------------------------------------------------------
# The packages and what to read from each

# name -> (file patterns relative to the package root, reader, path regex to leave out).
# Only sources written by people are read: the kernel's .rst files rather than its generated
# HTML, the Perl .pod files rather than the man pages made from them, and the English pages of
# the Handbook only. Tables of contents and indexes are left out (they are lists of titles), and
# so is the text of the GNU FDL that the media API manual carries (a licence, not prose).
SOURCES = {
    "linux-doc-6.1": (["usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz"],
                      rst_paragraphs, r"/Documentation/translations/|/fdl-appendix\.rst"),
    "perl-doc": (["usr/share/perl/*/pod/*.pod"], pod_paragraphs, r"/perltoc\.pod$"),
    "postgresql-doc-15": (["usr/share/doc/postgresql-doc-15/html/*.html"], html_paragraphs,
                          r"/(bookindex|index|legalnotice)\.html$"),
    "debian-handbook": (["usr/share/doc/debian-handbook/html/en-US/*.html"], html_paragraphs,
                        r"/(index|pr01|pr02|ix01)\.html$"),
}
assert not FORBIDDEN & set(SOURCES), "a training or held-out package is listed as a source"


def licence(copyright_path):
    """The licence of the `Files: *` stanza of a machine-readable debian/copyright file."""
    try:
        text = read(copyright_path)
    except OSError:
        return "unknown (no copyright file)"
    for stanza in re.split(r"\n\s*\n", text):
        if re.search(r"^Files:\s*\*\s*$", stanza, re.M):
            m = re.search(r"^License:\s*(.+)$", stanza, re.M)
            if m:
                return m.group(1).strip()
    return "see " + copyright_path


def package_texts(root, package, version):
    """[(sort key, source, text)] of one extracted package, before deduplication."""
    patterns, reader, exclude = SOURCES[package]
    files = set()
    for pattern in patterns:
        files.update(glob.glob(os.path.join(root, pattern), recursive=True))
    items = []
    for path in sorted(files):
        inner = "/" + os.path.relpath(path, root)
        if exclude and re.search(exclude, inner):
            continue
        source = f"{package}/{version}:{inner}"
        for pos, para in enumerate(reader(read(path))):
            if keep(para):
                items.append(((source, pos), source, para))
    return items


def package_of(item):
    return item[1].split("/", 1)[0]


def package_limits(counts, max_share=MAX_SHARE, min_total=MIN_TOTAL, max_total=None):
    """How many texts to keep from each package, given how many each has.

    First no package may exceed max_share of the corpus, unless that would leave fewer than
    min_total texts. Then, if max_total is set and still exceeded, the largest packages are
    cut down to a common level (water filling), so the small ones keep everything and the
    corpus stays as balanced as the packages allow."""
    limits = dict(counts)
    total = sum(counts.values())
    for pkg, n in counts.items():
        others = total - n
        share_cap = max(int(others * max_share / (1 - max_share)), min_total - others)
        limits[pkg] = min(n, share_cap)
    if max_total and sum(limits.values()) > max_total:
        level = max(limits.values())
        lo, hi = 0, level
        while lo < hi:                       # the highest level whose total fits
            mid = (lo + hi + 1) // 2
            if sum(min(n, mid) for n in limits.values()) <= max_total:
                lo = mid
            else:
                hi = mid - 1
        limits = {pkg: min(n, lo) for pkg, n in limits.items()}
    return limits


def apply_limits(items, limits):
    """Keep limits[package] texts of each package. The texts kept from a cut package are those
    with the smallest SHA-256 of their text: a fixed choice that does not depend on the order of
    files and spreads over all of them. The result is in source order again."""
    by_pkg = {}
    for it in items:
        by_pkg.setdefault(package_of(it), []).append(it)
    kept = []
    for pkg, its in by_pkg.items():
        if len(its) > limits[pkg]:
            its = sorted(its, key=lambda it: hashlib.sha256(it[2].encode("utf-8")).digest())
            its = its[:limits[pkg]]
        kept.extend(its)
    return sorted(kept, key=lambda it: it[0])


def quantiles(values, qs=(0, 0.1, 0.25, 0.5, 0.75, 0.9, 1)):
    v = sorted(values)
    return {q: v[min(len(v) - 1, int(round(q * (len(v) - 1))))] for q in qs}


def build(work, out_dir, max_total=MAX_TOTAL):
    versions = {}
    with open(os.path.join(work, "packages.txt"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                pkg, ver = line.split()[:2]
                versions[pkg] = ver
    missing = set(SOURCES) - set(versions)
    if missing:
        sys.exit(f"packages missing from {work}/packages.txt: {' '.join(sorted(missing))}")

    raw = []
    for pkg in sorted(SOURCES):
        raw.extend(package_texts(os.path.join(work, "x", pkg), pkg, versions[pkg]))
    raw.sort(key=lambda it: it[0])
    # Exact deduplication over the whole corpus; the first occurrence in source order wins.
    unique = dedup(raw)
    counts = {}
    for it in unique:
        counts[package_of(it)] = counts.get(package_of(it), 0) + 1
    final = apply_limits(unique, package_limits(counts, max_total=max_total))

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "human.jsonl"), "w", encoding="utf-8") as f:
        for _, source, text in final:
            f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
    with open(os.path.join(out_dir, "versions.txt"), "w", encoding="utf-8") as f:
        f.write("# package\tversion\tlicence (Files: * of the package's debian/copyright)\n")
        for pkg in sorted(SOURCES):
            lic = licence(os.path.join(work, "x", pkg, "usr/share/doc", pkg, "copyright"))
            f.write(f"{pkg}\t{versions[pkg]}\t{lic}\n")

    # Summary.
    def per_pkg(items):
        counts = {}
        for it in items:
            counts[package_of(it)] = counts.get(package_of(it), 0) + 1
        return counts
    c_raw, c_unique, c_final = per_pkg(raw), per_pkg(unique), per_pkg(final)
    # prose: paragraphs that passed the length and prose filter; unique: after exact
    # deduplication; final: after the share and total limits.
    print(f"{'package':<20} {'version':<24} {'prose':>7} {'unique':>7} {'final':>7} {'share':>6}")
    for pkg in sorted(SOURCES):
        n = c_final.get(pkg, 0)
        print(f"{pkg:<20} {versions[pkg]:<24} {c_raw.get(pkg, 0):>7} {c_unique.get(pkg, 0):>7} "
              f"{n:>7} {100.0 * n / max(1, len(final)):>5.1f}%")
    words = [word_count(t) for _, _, t in final]
    qs = quantiles(words)
    print(f"total {len(final)} texts, {sum(words)} words, "
          f"{os.path.getsize(os.path.join(out_dir, 'human.jsonl'))} bytes in {out_dir}/human.jsonl")
    print("words per text: " + ", ".join(
        f"{'min' if q == 0 else 'max' if q == 1 else 'p%d' % round(q * 100)} {v}"
        for q, v in qs.items()) + f", mean {sum(words) / len(words):.1f}")
    if len(final) < MIN_TOTAL:
        sys.exit(f"only {len(final)} texts, fewer than the {MIN_TOTAL} required")


def main(argv):
    if argv[1:] == ["--packages"]:
        print("\n".join(sorted(SOURCES)))
        return
    args, max_total = argv[1:], MAX_TOTAL
    if len(args) == 4 and args[0] == "--max-total":
        max_total, args = int(args[1]), args[2:]
    if len(args) != 2:
        sys.exit(__doc__)
    build(args[0], args[1], max_total or None)


if __name__ == "__main__":
    main(sys.argv)
