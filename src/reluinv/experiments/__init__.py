"""One module per analysis or figure; each returns JSON-serialisable numbers, plotting is separate."""
