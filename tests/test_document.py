"""A hand-written reading's Markdown becomes report blocks: tables stay tables."""

from pathlib import Path

from steadylm.experiments.document import (
    Bullets,
    Heading,
    Para,
    Table,
    parse_markdown,
    to_html,
    to_markdown,
)

READING = """## So far

| depth | pre-LN | MLRA \\| rank 64 |
|---|:--|--:|
| 6 | 5.452 (8; 0.235) | 5.925 |
| 24 | 5.451 | not finished |

Text after the table
on two lines.

| not a table: no rule row |
| just two lines starting with a bar |
"""


def test_a_pipe_table_is_a_table_and_renders_as_one():
    blocks = parse_markdown(READING)
    assert blocks[0] == Heading("So far", 2)
    assert blocks[1] == Table(
        ["depth", "pre-LN", "MLRA | rank 64"],
        [["6", "5.452 (8; 0.235)", "5.925"], ["24", "5.451", "not finished"]],
    )
    assert blocks[2] == Para("Text after the table on two lines.")
    assert isinstance(blocks[3], Para) and blocks[3].text.startswith("| not a table")
    md = to_markdown(blocks)
    assert "| depth | pre-LN | MLRA \\| rank 64 |\n|---|---|---|\n| 6 | 5.452 (8; 0.235) | 5.925 |\n" in md
    html = to_html(blocks, Path("."), "t")
    assert "<th>MLRA | rank 64</th>" in html and "<td>not finished</td>" in html


def test_a_list_right_under_its_lead_in_is_a_list():
    blocks = parse_markdown("**Lead-in:** over 39 runs\n- first item\n  continued\n- second\n\n- alone\n")
    assert blocks == [
        Para("**Lead-in:** over 39 runs"),
        Bullets(["first item continued", "second"]),
        Bullets(["alone"]),
    ]
