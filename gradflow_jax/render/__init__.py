"""Terminal tables, PNG figures and HTML reports, from result types."""
