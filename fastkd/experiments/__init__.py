"""Multi-run drivers: each builds many runs from one command and writes their table and plots.

``grid`` (teachers x methods x seeds), ``report`` (a grid's or compare's table and plots from its run
folders), ``compare`` (backends or options side by side), ``ablate`` (one trick at a time), ``demo`` (the
main job on the embedded data), ``runs`` (run-or-reuse one cell), ``plots``. They may import every other
fastkd package; nothing outside ``fastkd.cli`` imports them.
"""
