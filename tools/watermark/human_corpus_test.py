#!/usr/bin/python3
"""Checks of the cleaning in human_corpus.py on small inline samples; needs no downloads.

  /usr/bin/python3 tools/watermark/human_corpus_test.py
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import human_corpus as hc  # noqa: E402

# A sentence of ordinary prose, repeated to pass the 40-word minimum where a test needs that.
PROSE = ("The scheduler keeps a list of the tasks that are ready to run, and it picks the one "
         "that has waited longest whenever the current task blocks or uses up its time slice.")
LONG = PROSE + " " + PROSE                               # 2 x 31 words


def test_unwrap_and_normalise():
    assert hc.unwrap(["  one two", "three   ", "", "four"]) == "one two three four"
    assert hc.normalise("a\u00a0b \t c\n\nd\u200b e") == "a b c d e"
    assert hc.normalise("Cafe\u0301") == "Caf\u00e9"      # NFC


def test_rst():
    text = """.. SPDX-License-Identifier: GPL-2.0

=====
Title
=====

Section
-------
First paragraph, wrapped
over two lines.
Second line of it.

Example of a literal block::

    int x = 1;

    x++;

Back to prose after the code.

.. code-block:: c

   return 0;

.. note::

   A directive body is dropped.

- a bullet item
  continued

  and its second paragraph

====  =====
col   value
====  =====

term
    Definition text that is prose.

option
    lower-case definition is dropped.

Uses ``literal`` and :c:func:`kmalloc` and `a link <https://example.org>`_ and **bold**
and *emphasis* and a reference_ and a footnote [#f1]_ here.
"""
    paras = hc.rst_paragraphs(text)
    assert paras == [
        "First paragraph, wrapped over two lines. Second line of it.",
        "Example of a literal block:",
        "Back to prose after the code.",
        "Definition text that is prose.",
        "Uses literal and kmalloc and a link and bold and emphasis and a reference and a "
        "footnote here.",
    ], paras
    # " ::" on its own introduces a literal block and renders as nothing.
    assert hc.rst_paragraphs("See this ::\n\n    code\n\nAfter.") == ["See this", "After."]


def test_pod():
    text = """=head1 NAME

perlfoo - a test

=head1 DESCRIPTION

Prose with B<bold>, I<italic>, C<< $a->b >>, E<lt>tagE<gt>, L<perlsec>,
L<the docs|perlsec/Taint mode>, L<perlsec/"Taint mode"> and X<index>S<no break>.

    my $verbatim = "code";

=begin html

<p>Raw HTML is not POD prose.</p>

=end html

=over 4

=item -x

Describes the option.

=back

=cut

sub not_pod { 1 }
"""
    paras = hc.pod_paragraphs(text)
    assert paras == [
        "perlfoo - a test",
        "Prose with bold, italic, $a->b, <tag>, perlsec, the docs, \"Taint mode\" in perlsec "
        "and no break.",
        "Describes the option.",
    ], paras


def test_html():
    text = """<html><head><title>T</title></head><body>
<div class="navheader"><p>Prev Next navigation</p></div>
<h1>Heading</h1>
<p>A <code>code</code> word and an &amp; entity,
wrapped.</p>
<div class="para">Publican paragraph<sup>[1]</sup>.</div>
<pre class="programlisting">SELECT 1;</pre>
<table><tr><td><p>cell</p></td></tr></table>
<ul><li><p>list item</p></li></ul>
<dl><dt>term</dt><dd><p>Definition prose.</p></dd></dl>
<p>Before <br>after.</p>
</body></html>"""
    assert hc.html_paragraphs(text) == [
        "A code word and an & entity, wrapped.",
        "Publican paragraph.",
        "Definition prose.",
        "Before after.",
    ], hc.html_paragraphs(text)


def test_filters():
    assert hc.keep(LONG)
    assert not hc.keep(PROSE)                             # 31 words: too short
    assert not hc.keep(" ".join([PROSE] * 13))             # 403 words: too long
    assert not hc.keep(LONG[:-1] + ":")                    # leads into something removed
    assert not hc.keep("where " + LONG)                    # continues a cut sentence
    code = "x = foo(bar[i]); if (x > 0) { y = x * 2; } else { y = -x; } return y; " * 5
    assert not hc.keep(code + "done.")
    table = " ".join(f"{i} 0x{i:04x} {i * 17}" for i in range(20)) + "."
    assert not hc.keep(table)
    german = ("Der Kern verwaltet eine Liste der Aufgaben, die bereit sind, und er wählt die "
              "Aufgabe, die am längsten gewartet hat, wenn die aktuelle Aufgabe blockiert. ") * 3
    assert not hc.keep(german)
    notice = ("This program is free software; you can redistribute it and/or modify it under "
              "the terms of the GNU General Public License. ") * 3
    assert not hc.keep(notice)


def test_dedup_and_limits():
    items = [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "b")]
    assert hc.dedup(items) == [(1, "a"), (2, "b"), (4, "c")]
    # A package over half the corpus is cut to the size of the rest (if 10,000 remain).
    assert hc.package_limits({"big": 30000, "s1": 6000, "s2": 6000}, max_total=None) == \
        {"big": 12000, "s1": 6000, "s2": 6000}
    # ... but not below the minimum total.
    assert hc.package_limits({"big": 9000, "s1": 1000, "s2": 1000}, max_total=None) == \
        {"big": 8000, "s1": 1000, "s2": 1000}
    # The total limit cuts the largest packages to a common level first.
    lim = hc.package_limits({"a": 13000, "b": 9000, "c": 5000, "d": 1500}, max_total=20000)
    assert lim["c"] == 5000 and lim["d"] == 1500 and lim["a"] == lim["b"] == 6750, lim
    # apply_limits keeps a fixed subset and returns it in source order.
    its = [(("p/1:f", i), "p/1:f", f"text {i}") for i in range(10)]
    kept = hc.apply_limits(its, {"p": 4})
    assert len(kept) == 4 and kept == sorted(kept) and kept == hc.apply_limits(its[::-1], {"p": 4})


def test_licence():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "copyright")
        with open(path, "w") as f:
            f.write("Format: x\n\nFiles: *\nCopyright: me\nLicense: GPL-2+\n\n"
                    "Files: debian/*\nLicense: MIT\n")
        assert hc.licence(path) == "GPL-2+"


if __name__ == "__main__":
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_")]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print(f"ok   {name}")
        except AssertionError as e:
            failed += 1
            print(f"FAIL {name}: {e}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
