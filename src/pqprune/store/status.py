"""The statuses of a run in the results database (the ``runs.status`` column), without the database code."""

STATUSES = ("running", "finished", "failed", "interrupted")
