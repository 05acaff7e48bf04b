"""Small helpers the chapter notebooks call (so notebooks hold prose and calls, not plumbing)."""
from __future__ import annotations

import time
from typing import Any

from lib.organisms.seeding import write_results


def chapter_params(namespace: dict[str, Any], stem: str) -> dict[str, Any]:
    """The values of chapter ``stem``'s parameters as they stand in ``namespace`` (the notebook's globals())."""
    from lib.book.runner import notebook_parameters

    return {k: namespace[k] for k in notebook_parameters(stem) if k in namespace}


def finish(namespace: dict[str, Any], stem: str, results: dict[str, Any]) -> dict[str, Any]:
    """Write ``results.json`` (headline numbers + provenance) into the notebook's ``OUTPUT_DIR``; return results.

    The provenance names the chapter's code (``findings.chapter_hash``) and the organisms the run loaded
    (``recipes.loaded_organisms``), so a seed record made from other code or other organisms is known stale."""
    from lib.book.findings import chapter_hash
    from lib.organisms.recipes import loaded_organisms

    params = chapter_params(namespace, stem)
    write_results(namespace["OUTPUT_DIR"], results, params, started=namespace.get("STARTED", time.time()),
                  extra={"chapter_hash": chapter_hash(stem), "organisms": loaded_organisms()})
    return results


def glue_all(values: dict[str, Any]) -> None:
    """``myst_nb.glue`` every value (hidden), so prose can cite it as ``{glue:text}`key:.2f```."""
    from myst_nb import glue

    for k, v in values.items():
        glue(k, v, display=False)
