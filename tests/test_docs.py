"""The specification documents follow the code they describe.

* ``docs/protocol.md`` holds the error-code table generated from ``sync.errors.ErrorCode``
  (code, HTTP status, WebSocket close code, meaning), between two marker comments.
  Regenerate it after changing the enum::

      .venv/bin/python tests/test_docs.py > /tmp/table.md   # then paste between the markers

* ``docs/domain.md`` names every dataset and mutation of the bundled domain, and in each
  one's section every column (datasets) or argument (mutations).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.domain.registry import build_registry
from sync.errors import ErrorCode

DOCS = Path(__file__).resolve().parent.parent / "docs"
BEGIN = "<!-- BEGIN error-table: generated from sync/errors.py by tests/test_docs.py -->"
END = "<!-- END error-table -->"


def render_error_table() -> str:
    """The error table exactly as docs/protocol.md must carry it."""
    lines = [
        "| code | where | HTTP status | WebSocket close code | meaning |",
        "|---|---|---|---|---|",
    ]
    for code in ErrorCode:
        where = "mutation result" if code.http == 200 else "request"
        close = "—" if code.close == 0 else str(code.close)
        lines.append(f"| `{code.value}` | {where} | {code.http} | {close} | {code.meaning} |")
    return "\n".join(lines)


def _section(text: str, heading: str) -> str:
    """The text under a markdown heading, up to the next heading of the same or higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.M)
    assert match, f"docs/domain.md has no heading `{heading}`"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


@pytest.fixture(scope="module")
def protocol() -> str:
    return (DOCS / "protocol.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def domain() -> str:
    return (DOCS / "domain.md").read_text(encoding="utf-8")


def test_protocol_carries_the_generated_error_table(protocol):
    assert BEGIN in protocol and END in protocol, "docs/protocol.md lost the error-table markers"
    block = protocol.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == render_error_table(), (
        "docs/protocol.md's error table differs from sync/errors.py; regenerate it with "
        "`.venv/bin/python tests/test_docs.py`"
    )


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_every_error_code_has_its_row_with_status(protocol, code):
    rows = [line for line in protocol.splitlines() if line.startswith(f"| `{code.value}` |")]
    assert rows, f"{code.value} is missing from docs/protocol.md's error table"
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[2] == str(code.http), f"{code.value}: HTTP status {cells[2]} in the docs, {code.http} in the code"
    assert cells[3] == ("—" if code.close == 0 else str(code.close))


def test_the_error_table_names_no_unknown_code(protocol):
    block = protocol.split(BEGIN, 1)[1].split(END, 1)[0]
    named = set(re.findall(r"^\| `([A-Z_]+)` \|", block, re.M))
    assert named == {code.value for code in ErrorCode}


@pytest.mark.parametrize("name", sorted(build_registry().datasets))
def test_every_dataset_is_documented_with_its_columns(domain, name):
    dataset = build_registry().datasets[name]
    section = _section(domain, f"Dataset `{name}`")
    missing = [col for col in dataset.columns if f"`{col}`" not in section]
    assert not missing, f"docs/domain.md, dataset {name}: columns {missing} are not described"
    assert f"`{dataset.key}`" in section


@pytest.mark.parametrize("name", sorted(build_registry().mutations))
def test_every_mutation_is_documented_with_its_arguments(domain, name):
    spec = build_registry().mutations[name]
    section = _section(domain, f"Mutation `{name}`")
    missing = [arg for arg in spec.args if f"`{arg}`" not in section]
    assert not missing, f"docs/domain.md, mutation {name}: arguments {missing} are not described"
    for role in spec.roles:
        assert role in section, f"docs/domain.md, mutation {name}: role {role} is not named"


if __name__ == "__main__":
    print(BEGIN)
    print(render_error_table())
    print(END)
