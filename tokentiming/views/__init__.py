"""Presentation: plotly figures and HTML built from traces, for the app and the notebooks.

Nothing in the library imports from here."""
