"""Math rendered as MathML when the page is built, so formulas read the same offline.

Sphinx's default renderer, MathJax, typesets the TeX in the reader's browser from a CDN; without
the network the reader sees raw ``\\(\\eta_{safe}\\)``. Here docutils' own TeX-to-MathML converter
(shipped with Sphinx, nothing to install) writes MathML into the page, which every current browser
draws natively. A formula the converter cannot read is a build warning naming it, so the strict
CI build (``-W``) fails on it rather than publishing raw TeX.

A sub- or superscript of three or more letters in braces is a word, as in ``\\eta_{safe}`` or
``\\lambda_{max}``, and is set upright as ``\\mathrm`` would set it: TeX, and the converter, would
set it as that many italic variables multiplied together.
"""

import re

from docutils import nodes
from docutils.utils.math import latex2mathml
from sphinx.util import logging
from sphinx.util.math import get_node_equation_number

logger = logging.getLogger(__name__)

_WORD_SCRIPT = re.compile(r"([_^])\{([A-Za-z]{3,})\}")


def upright_word_scripts(tex: str) -> str:
    """``tex`` with every sub- or superscript of three or more letters wrapped in ``\\mathrm``."""
    return _WORD_SCRIPT.sub(r"\1{\\mathrm{\2}}", tex)


def _mathml(translator, node, tex: str, as_block: bool) -> str:
    """MathML for ``tex``; on a formula docutils cannot convert, a warning and the escaped TeX."""
    try:
        return latex2mathml.tex2mathml(upright_word_scripts(tex), as_block=as_block)
    except SyntaxError as err:
        logger.warning("cannot render math %r as MathML: %s", tex, err, location=node)
        return f"<code>{translator.encode(tex)}</code>"


def visit_inline_math(translator, node: nodes.math) -> None:
    translator.body.append(translator.starttag(node, "span", "", CLASS="math"))
    translator.body.append(_mathml(translator, node, node.astext(), as_block=False) + "</span>")
    raise nodes.SkipNode


def visit_block_math(translator, node: nodes.math_block) -> None:
    """One display per blank-line-separated equation, numbered like Sphinx's own renderers."""
    translator.body.append(translator.starttag(node, "div", CLASS="math"))
    if node["number"]:
        number = get_node_equation_number(translator, node)
        translator.body.append(f'<span class="eqno">({number})')
        translator.add_permalink_ref(node, "Link to this equation")
        translator.body.append("</span>")
    for part in (p for p in node.astext().split("\n\n") if p.strip()):
        translator.body.append(_mathml(translator, node, part, as_block=True))
    translator.body.append("</div>\n")
    raise nodes.SkipNode


def setup(app):
    app.add_html_math_renderer("mathml", (visit_inline_math, None), (visit_block_math, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
