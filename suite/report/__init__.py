"""The report: collate result records with pandas (collate), compare and judge them (analysis,
history) and render Markdown and HTML with plots (build: `from suite.report.build import
build_report`). Nothing is imported here, so collating does not load matplotlib."""
