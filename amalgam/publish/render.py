"""Jinja rendering of the files a publish writes (model card, Space card, Space app).

The templates live in the top-level ``model_cards/`` folder, where people look for them;
``amalgam/publish/templates`` is a link to it, so the package finds them the same way from a checkout, an
editable install or a wheel (pyproject ships them as package data, and building a wheel follows the link).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2


def markdown_cell(value: Any) -> str:
    """``value`` as text that cannot break a Markdown table row.

    >>> markdown_cell("a|b")
    'a\\\\|b'
    """
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # StrictUndefined: a missing value is an error here, not a silently empty line on the Hub.
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("amalgam.publish", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # Markdown and Python, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["cell"] = markdown_cell
    return env


def render_template(template: str, /, **context: Any) -> str:
    """Render ``template`` from ``model_cards/``.

    >>> render_template("space_card.md.j2", metadata="sdk: gradio", title="t", repo_id="org/m", private=False)[:16]
    '---\\nsdk: gradio\\n'
    """
    return _environment().get_template(template).render(**context)

