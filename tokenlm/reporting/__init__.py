"""What RUN/report.md and RUN/report.html are made of beyond each stage's own figures:
the listening section (tokenlm.reporting.listening) and the HTML page (tokenlm.reporting.html)."""
