"""Layer 4, the book: the machinery that runs chapters, decides findings and builds the site.

- ``runner``: the chapter list (``_toc.yml``), parameter validation, papermill execution.
- ``progress``: where a book build is (a status line per running chapter) and its closing summary.
- ``ranges``: the allowed values each parameter declares in its comment (``[0, ∞)``, ``{cpu, cuda}``), and their check.
- ``chapter``: the helpers a chapter notebook calls (``finish``, ``glue_all``, ``chapter_params``).
- ``findings``: findings declared in front matter, their per-seed and pooled verdicts, seed records.
- ``sweep``: seed sweeps (a local process pool, or a Dask cluster).
- ``teach``, ``checks``: exercise versions of the chapters and their checks.
- ``plotting``: the house style of figures.
- ``attention_widget``: interactive attention patterns (hover a token), self-contained HTML for the book.
- ``citations``: the ``{cite}`` roles in the prose against ``references.bib`` (checked before a build).
- ``cli``: the command line, ``python -m lib {list,run,build,sweep,compare,teach,organisms}``.

Imports: anything below (``lib.worlds``, ``lib.organisms``, ``lib.methods``).
"""
