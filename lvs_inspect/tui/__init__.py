"""The terminal UI (``lvs-inspect tui``): Textual screens over the same analysis the reports render.

Only ``lvs_inspect.cli.tui`` imports this package, and only inside its ``run()``: the engine stays
free of Textual (tests/test_import_hygiene.py).

* :mod:`.app` — the app, fed by a :class:`~lvs_inspect.sources.Source` in a plain thread;
* :mod:`.model` — what the screens show, built from an Analysis (no Textual);
* :mod:`.screens`, :mod:`.widgets`, :mod:`.commands` — panes, the virtual table, the palette;
* :mod:`.export`, :mod:`.dissect` — exports and Wireshark's dissection of a frame (no Textual);
* :mod:`.keys` — the user's key bindings file; :mod:`.expected` — the forwarder replay hook.
"""
