"""`trust bench`: every method, task and attack in one harness, with tables, JSON/CSV and an HTML report."""
