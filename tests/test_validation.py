"""The validation table (docs/validation.md) must stay within its targets."""

from romsim.validation import render_markdown, validation_rows

# Rows the model misses, with the reason (docs/validation.md explains): the paper's
# throughput table is not smooth in the input length, so no single output length fits all four.
KNOWN_MISSES = {
    "throughput, 256 input tokens": 15.0,
    "throughput, 2048 input tokens": 15.0,
}


def test_every_reported_figure_within_target():
    rows = validation_rows()
    for r in rows:
        if r.target_pct is None:
            continue
        limit = next((v for k, v in KNOWN_MISSES.items() if r.figure.startswith(k)), r.target_pct)
        assert abs(r.error_pct) <= limit + 1e-9, (
            f"{r.figure}: {r.error_pct:+.1f} % (limit {limit} %)"
        )


def test_docs_table_is_current():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "validation.md").read_text()
    assert render_markdown(validation_rows()) in doc, (
        "regenerate: romsim validate --write docs/validation.md"
    )
