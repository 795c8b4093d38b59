"""Attribute and property docstrings are prose, not napoleon's ``type: description`` form.

Napoleon reads the first line of an attribute's docstring as ``type: description``, so prose with
a colon ("(None: the class name)") rendered a stray "Type:" field on the API page. This project
types attributes by annotation, which autodoc already shows in the signature; napoleon still
formats every other docstring (Args, Returns, Example sections).
"""

EVENT = "autodoc-process-docstring"
PROSE_ONLY = ("attribute", "property", "data")


def _except_attributes(handler):
    def process(app, what, name, obj, options, lines) -> None:
        if what not in PROSE_ONLY:
            handler(app, what, name, obj, options, lines)

    return process


def setup(app):
    """Wraps napoleon's docstring listener (napoleon must be listed before this extension)."""
    for listener in list(app.events.listeners[EVENT]):
        if listener.handler.__module__ == "sphinx.ext.napoleon":
            app.disconnect(listener.id)
            app.connect(EVENT, _except_attributes(listener.handler), priority=listener.priority)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
