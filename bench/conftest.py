"""Every figure the benchmarks measure, printed as one table at the end of `make bench` and written to
bench/results.json (not committed: the figures are this machine's). A goal missed fails `make bench`."""
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "tests"))

RESULTS = pathlib.Path(__file__).parent / "results.json"


class Figures:
    def __init__(self):
        self.rows: dict[str, dict] = {}

    def record(self, name: str, value: float, unit: str, *, baseline: float | None = None, goal: str = "",
               met: bool | None = None, **detail) -> None:
        """One measured figure; `baseline` is the same thing measured for the bare client in the same run."""
        self.rows[name] = {"value": value, "unit": unit, "baseline": baseline, "goal": goal, "met": met,
                           **({"detail": detail} if detail else {})}

    def missed(self) -> list[str]:
        return [name for name, row in self.rows.items() if row["met"] is False]

    def table(self) -> str:
        lines = [f"{'figure':46s} {'kiln':>12s} {'bare client':>12s}  {'goal':24s} met"]
        for name, row in self.rows.items():
            baseline = "" if row["baseline"] is None else _number(row["baseline"])
            met = {True: "yes", False: "NO", None: ""}[row["met"]]
            lines.append(f"{name:46s} {_number(row['value']):>12s} {baseline:>12s}  {row['goal']:24s} {met}"
                         f"   [{row['unit']}]")
        return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 100 or float(value).is_integer() else f"{value:.3g}"


_FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    return _FIGURES


def pytest_sessionfinish(session, exitstatus):
    if _FIGURES.missed() and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if not _FIGURES.rows:
        return
    terminalreporter.section("kiln benchmarks")
    terminalreporter.write_line(_FIGURES.table())
    RESULTS.write_text(json.dumps(_FIGURES.rows, indent=2) + "\n")
    terminalreporter.write_line(f"written to {RESULTS}")
    if _FIGURES.missed():
        terminalreporter.write_line(f"goals missed: {', '.join(_FIGURES.missed())}", red=True)
