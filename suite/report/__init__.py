"""The report: collate result records with pandas and render Markdown and HTML (with plots)."""
from suite.report.build import Report, build_report

__all__ = ["Report", "build_report"]
