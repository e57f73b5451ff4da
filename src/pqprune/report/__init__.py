"""Reports from the results database: phases of pruning, seed statistics, figures, summary tables and HTML."""

from pqprune.report.build import ReportResult, generate, parse_where, write_report
from pqprune.report.phases import phases, pqi_peak_round
from pqprune.report.runs import Group, MethodRuns, ReportError, load_groups
from pqprune.report.summary import summarize, summary_cells, summary_row

__all__ = [
    "Group",
    "MethodRuns",
    "ReportError",
    "ReportResult",
    "generate",
    "load_groups",
    "parse_where",
    "phases",
    "pqi_peak_round",
    "summarize",
    "summary_cells",
    "summary_row",
    "write_report",
]
