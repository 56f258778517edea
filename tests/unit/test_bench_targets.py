"""The targets table of bench.targets: verdicts and "by how much", on given numbers."""

from __future__ import annotations

from bench.table import Row, format_table, number, target_text, verdict


def test_a_floor_met_and_missed_by_how_much() -> None:
    assert verdict(Row("rate", ">=", 20_000, "events/s", 25_000)) == "met"
    assert verdict(Row("rate", ">=", 20_000, "events/s", 20_000)) == "met"
    missed = Row("rate", ">=", 20_000, "events/s", 1_600)
    assert verdict(missed) == "MISSED by 18,400 events/s (12.5x short)"


def test_a_ceiling_met_and_missed_by_how_much() -> None:
    assert verdict(Row("p99", "<", 10, "ms", 9.5)) == "met"
    assert verdict(Row("p99", "<", 10, "ms", 10.4)) == "MISSED by 0.4 ms (1.04x the limit)"
    assert verdict(Row("p99", "<", 10, "ms", 10)).startswith("MISSED")
    assert verdict(Row("size", "<=", 1024, "B", 1024)) == "met"
    assert verdict(Row("p99", "<", 250, "ms", 1_859)) == "MISSED by 1,609 ms (7.44x the limit)"


def test_ratios_and_reported_figures() -> None:
    assert verdict(Row("vs naive", ">=", 10, "x", 0.8)) == "MISSED by 9.20x (12.5x short)"
    info = Row("fraction of COPY", "info", 0.2, "", 0.013)
    assert info.met is None
    assert verdict(info) == "(reported)"
    assert target_text(info) == "~0.2"


def test_a_figure_not_measured_says_why() -> None:
    row = Row("p99", "<", 100, "ms", None, "no entries seen")
    assert row.met is None
    assert verdict(row) == "NOT MEASURED: no entries seen"


def test_numbers() -> None:
    assert number(1234.5, "events/s") == "1,234 events/s"  # rounds half to even
    assert number(12.34, "ms") == "12.3 ms"
    assert number(1.234, "x") == "1.23x"
    assert number(0.01234) == "0.0123"
    assert number(5.0, "s") == "5 s"


def test_the_table_has_a_row_per_target_and_counts_the_met_ones() -> None:
    rows = [
        Row("end to end", ">=", 20_000, "events/s", 1_650, "100,000 events"),
        Row("restart", "<", 2, "s", 1.2),
        Row("fraction", "info", 0.2, "", 0.01),
        Row("latency", "<", 100, "ms", None, "no entries seen"),
    ]
    lines = format_table(rows)
    assert lines[0].split() == ["what", "target", "measured", "verdict"]
    body = lines[2:6]
    assert [line.split("  ")[0] for line in body] == [
        "end to end",
        "restart",
        "fraction",
        "latency",
    ]
    assert "MISSED by 18,350 events/s (12.1x short)" in body[0]
    assert body[1].endswith("met")
    assert "end to end: 100,000 events" in "\n".join(lines)
    assert lines[-1] == "1 of 2 bounded targets met"
