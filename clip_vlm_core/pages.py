"""The HTML pages clip-vlm writes (the demo's report, `eval`'s report.html, `data gallery`), rendered from
the Jinja2 templates in clip_vlm_core/templates/ with autoescape on: every value a template shows is
escaped unless the template says otherwise, so a caption holding `<script>` is shown, never run.
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(loader=PackageLoader("clip_vlm_core", "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_page(template: str, **context: Any) -> str:
    """The page `template` (a file in clip_vlm_core/templates/) with `context` filled in and escaped."""
    return _environment().get_template(template).render(**context)
