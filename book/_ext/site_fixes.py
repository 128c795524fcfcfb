"""Sphinx extension: two fixes the built site needs in a browser, both found by `make site-check`.

1. Each page lists each script once. In this Jupyter Book 1.x build (jupyter-book 1.0.4, sphinx-thebe 0.3.1,
   sphinx-togglebutton) every page carried sphinx-thebe's and sphinx-togglebutton's inline configuration scripts
   twice (once with the file name None, once with ''), and the second `const THEBE_JS_URL = ...` is a JavaScript
   error in every browser.
2. The widget manager (@jupyter-widgets/html-manager 1.0.x) typesets each widget label with MathJax 2's
   `MathJax.Hub.Queue`, which MathJax 3 (the book's) does not have: on a page with both math and a widget
   snapshot every label threw. A two-line `Hub.Queue` that calls MathJax 3's `typesetPromise` stands in for it.
"""
from __future__ import annotations

# MathJax 3 runs (deferred) before DOMContentLoaded, and this listener is registered before the widget manager's
MATHJAX2_QUEUE = """document.addEventListener("DOMContentLoaded", () => {
  if (window.MathJax && MathJax.startup && !MathJax.Hub) {
    MathJax.Hub = {Queue: (command) => MathJax.startup.promise.then(() => MathJax.typesetPromise([command[2]]))};
  }
});"""


def _unique_scripts(app, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Keep the first of the scripts with the same file, priority and attributes (an inline script's body)."""
    seen, kept = set(), []
    for script in context.get("script_files", []):
        identity = (script.filename or "", script.priority, repr(sorted(script.attributes.items())))
        if identity not in seen:
            seen.add(identity)
            kept.append(script)
    context["script_files"] = kept


def setup(app) -> dict:
    """Register both fixes."""
    app.add_js_file(None, body=MATHJAX2_QUEUE)
    app.connect("html-page-context", _unique_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
