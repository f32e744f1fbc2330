"""The notebook layer: experiments with live figures, plots, widgets and run analysis.

It imports the training core; the core never imports it (``tests/test_layout.py``).
"""
