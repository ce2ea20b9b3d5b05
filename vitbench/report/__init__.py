"""Reports written from results: timm-format tables, plots, diffs."""
