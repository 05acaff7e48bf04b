"""Interactive attention patterns for the HTML book: hover a token to see where it attends.

``attention_pattern_html(tokens, pattern, head_names)`` returns an object that Jupyter and the built book show as
a small widget: the prompt's tokens in a row, one button per head, and the selected head's pattern as a grid
(row = query position, column = key position). Hovering (or clicking, to pin) a token colours every token by
the attention the hovered one *pays* to it (its row of the pattern); the "received" switch colours by the
attention it *receives* (its column). Until a token is hovered the last token is shown: in an IOI prompt that
is END, where the name movers read the names.

The page must work offline (the book's build and its browser test have no network), so everything is inline:
the data as JSON, a few lines of CSS, and plain JavaScript with no library and no external load. (The pip
package ``circuitsvis`` renders the same kind of view but loads its React bundle from a CDN when online, and its
offline fallback inlines a 1.3 MB bundle into every call; this module stays a few kB per widget.)

Where there is no browser (a text console), the object prints as one line naming the heads and the prompt.
"""
from __future__ import annotations

import hashlib
import html
import itertools
import json
import math
from typing import Sequence

_COUNTER = itertools.count()

# Okabe–Ito blue (lib.book.plotting.PALETTE[0]) as RGB, so the widget matches the figures.
_RGB = "0, 114, 178"

_CSS = """
#{id} {{ font-size: 0.85rem; margin: 0.6rem 0 1rem 0; }}
#{id} .ftm-attn-bar {{ display: flex; flex-wrap: wrap; gap: 0.3rem; align-items: center; margin-bottom: 0.4rem; }}
#{id} .ftm-attn-head {{ border: 1px solid rgba({rgb}, 0.6); background: transparent; color: inherit;
  border-radius: 3px; padding: 0.1rem 0.45rem; cursor: pointer; font-size: 0.8rem; }}
#{id} .ftm-attn-head[aria-pressed="true"] {{ background: rgba({rgb}, 0.85); color: #fff; }}
#{id} .ftm-attn-mode {{ margin-left: 0.8rem; }}
#{id} .ftm-attn-tokens {{ line-height: 2.1; margin: 0.2rem 0; }}
#{id} .ftm-attn-tok {{ display: inline-block; padding: 0 0.25rem; margin: 0 0.08rem; border-radius: 3px;
  border: 1px solid transparent; cursor: pointer; font-family: monospace; }}
#{id} .ftm-attn-tok.ftm-attn-focus {{ border-color: currentColor; }}
#{id} .ftm-attn-readout {{ min-height: 1.3rem; font-family: monospace; opacity: 0.85; }}
#{id} .ftm-attn-grid {{ display: grid; gap: 1px; margin-top: 0.4rem; width: max-content; max-width: 100%;
  overflow-x: auto; }}
#{id} .ftm-attn-cell {{ width: 13px; height: 13px; outline: 1px solid rgba(128, 128, 128, 0.15); }}
#{id} .ftm-attn-cell.ftm-attn-row {{ outline: 1px solid currentColor; }}
#{id} .ftm-attn-label {{ font-family: monospace; font-size: 0.65rem; line-height: 13px; white-space: nowrap;
  overflow: hidden; text-align: right; padding-right: 3px; }}
#{id} .ftm-attn-collabel {{ writing-mode: vertical-rl; transform: rotate(180deg); text-align: left;
  padding: 0 0 3px 0; line-height: 13px; max-height: 6rem; }}
"""

# The script reads its data from the JSON block inside the widget, so the same code serves every widget.
_JS = r"""
(function () {
  var me = document.currentScript;  // its own widget, even if the same output is shown twice on a page
  var root = (me && me.closest && me.closest(".ftm-attn")) || document.getElementById("__ID__");
  if (!root || root.dataset.ready) return;
  root.dataset.ready = "1";
  var data = JSON.parse(root.querySelector("script.ftm-attn-data").textContent);
  var n = data.tokens.length, head = 0, pinned = null, received = false;
  var toks = Array.prototype.slice.call(root.querySelectorAll(".ftm-attn-tok"));
  var buttons = Array.prototype.slice.call(root.querySelectorAll(".ftm-attn-head"));
  var readout = root.querySelector(".ftm-attn-readout");
  var grid = root.querySelector(".ftm-attn-grid");
  var rgb = data.rgb;
  function colour(v) { return "rgba(" + rgb + ", " + Math.max(0, Math.min(1, v)).toFixed(3) + ")"; }
  function ink(v) { return v > 0.55 ? "#fff" : ""; }
  function fmt(v) { return v.toFixed(2); }
  // the grid: a corner, the key labels, then per query a label and n cells
  grid.style.gridTemplateColumns = "minmax(2rem, 6rem) repeat(" + n + ", 13px)";
  var cells = [];
  grid.appendChild(document.createElement("div"));
  data.tokens.forEach(function (t) {
    var d = document.createElement("div");
    d.className = "ftm-attn-label ftm-attn-collabel"; d.textContent = t; grid.appendChild(d);
  });
  for (var q = 0; q < n; q++) {
    var lab = document.createElement("div");
    lab.className = "ftm-attn-label"; lab.textContent = data.tokens[q]; grid.appendChild(lab);
    cells.push([]);
    for (var k = 0; k < n; k++) {
      var c = document.createElement("div");
      c.className = "ftm-attn-cell"; c.dataset.q = q; c.dataset.k = k;
      grid.appendChild(c); cells[q].push(c);
    }
  }
  function drawGrid() {
    var p = data.patterns[head];
    for (var q = 0; q < n; q++) for (var k = 0; k < n; k++) {
      cells[q][k].style.backgroundColor = colour(p[q][k]);
      cells[q][k].title = data.tokens[q] + " \u2192 " + data.tokens[k] + ": " + fmt(p[q][k]);
    }
  }
  function show(i) {
    var p = data.patterns[head];
    var vals = [];
    for (var j = 0; j < n; j++) vals.push(received ? p[j][i] : p[i][j]);
    toks.forEach(function (el, j) {
      el.style.backgroundColor = colour(vals[j]);
      el.style.color = ink(vals[j]);
      el.title = fmt(vals[j]);
      el.classList.toggle("ftm-attn-focus", j === i);
    });
    for (var q = 0; q < n; q++) for (var k = 0; k < n; k++)
      cells[q][k].classList.toggle("ftm-attn-row", received ? k === i : q === i);
    var order = vals.map(function (v, j) { return j; }).sort(function (a, b) { return vals[b] - vals[a]; });
    var top = order.slice(0, 3).map(function (j) { return data.tokens[j] + "@" + j + " " + fmt(vals[j]); });
    readout.textContent = data.names[head] + ": " + data.tokens[i] + "@" + i +
      (received ? " is attended from " : " attends to ") + top.join(", ") + (pinned === null ? "" : "  (pinned)");
  }
  function current() { return pinned === null ? n - 1 : pinned; }
  toks.forEach(function (el, i) {
    el.addEventListener("mouseover", function () { show(i); });
    el.addEventListener("focus", function () { show(i); });
    el.addEventListener("click", function () { pinned = pinned === i ? null : i; show(current()); });
  });
  root.querySelector(".ftm-attn-tokens").addEventListener("mouseleave", function () { show(current()); });
  grid.addEventListener("mouseover", function (e) {
    var c = e.target;
    if (c.dataset && c.dataset.q !== undefined) show(received ? +c.dataset.k : +c.dataset.q);
  });
  grid.addEventListener("mouseleave", function () { show(current()); });
  buttons.forEach(function (b, h) {
    b.addEventListener("click", function () {
      head = h;
      buttons.forEach(function (o, j) { o.setAttribute("aria-pressed", j === h ? "true" : "false"); });
      drawGrid(); show(current());
    });
  });
  root.querySelector(".ftm-attn-received").addEventListener("change", function (e) {
    received = e.target.checked; show(current());
  });
  drawGrid(); show(current());
})();
"""


class AttentionPatterns:
    """An interactive attention-pattern view: ``_repr_html_`` for Jupyter and the book, ``repr`` for a console.

    ``html``: the self-contained HTML (no external script, style sheet or font). Build it with
    ``attention_pattern_html``.
    """

    def __init__(self, html_text: str, summary: str):
        self.html = html_text
        self._summary = summary

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self._summary


def _as_nested(pattern) -> list[list[list[float]]]:
    """``pattern`` (a tensor, an array or nested lists) as nested Python floats."""
    if hasattr(pattern, "detach"):
        pattern = pattern.detach().cpu()
    if hasattr(pattern, "tolist"):
        pattern = pattern.tolist()
    return [[[float(v) for v in row] for row in h] for h in pattern]


def attention_pattern_html(tokens: Sequence[str], pattern, head_names: Sequence[str] | None = None,
                           digits: int = 3) -> AttentionPatterns:
    """An interactive view of attention patterns on one prompt.

    ``tokens``: the prompt's ``n`` tokens as text (e.g. ``circuits.prompt_attention``'s words). ``pattern``
    ``[head, q, k]`` (tensor, array or nested lists; each ``n x n``): attention probabilities from query position
    ``q`` to key position ``k``, each in [0, 1]. ``head_names``: one label per head (default ``head 0``, ...).
    Values are rounded to ``digits`` decimals in the page. Raises ``ValueError`` naming the parameter whose shape
    or values do not fit.
    """
    tokens = [str(t) for t in tokens]
    n = len(tokens)
    if n == 0:
        raise ValueError("tokens is empty")
    pats = _as_nested(pattern)
    if not pats:
        raise ValueError("pattern has no head: expected [head, q, k]")
    for h, p in enumerate(pats):
        if len(p) != n or any(len(row) != n for row in p):
            shape = (len(p), len(p[0]) if p else 0)
            raise ValueError(f"pattern[{h}] has shape {shape}, expected ({n}, {n}) for {n} tokens")
        bad = [v for row in p for v in row if not math.isfinite(v) or v < -1e-6 or v > 1 + 1e-6]
        if bad:
            raise ValueError(f"pattern[{h}] has values outside [0, 1] (e.g. {bad[0]!r}): expected probabilities")
    if head_names is None:
        head_names = [f"head {h}" for h in range(len(pats))]
    head_names = [str(s) for s in head_names]
    if len(head_names) != len(pats):
        raise ValueError(f"head_names has {len(head_names)} names for {len(pats)} heads in pattern")
    data = {"tokens": tokens, "names": head_names, "rgb": _RGB,
            "patterns": [[[round(min(max(v, 0.0), 1.0), digits) for v in row] for row in p] for p in pats]}
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    wid = f"ftm-attn-{hashlib.sha1(payload.encode()).hexdigest()[:10]}-{next(_COUNTER)}"
    payload = payload.replace("<", "\\u003c")  # a token like "</script>" or "<!--" must not end the data block
    buttons = "".join(f'<button type="button" class="ftm-attn-head" aria-pressed="{"true" if h == 0 else "false"}">'
                      f"{html.escape(name)}</button>" for h, name in enumerate(head_names))
    spans = "".join(f'<span class="ftm-attn-tok" tabindex="0" data-i="{i}">{html.escape(t)}</span>'
                    for i, t in enumerate(tokens))
    page = (
        f'<div class="ftm-attn" id="{wid}">'
        f"<style>{_CSS.format(id=wid, rgb=_RGB)}</style>"
        f'<div class="ftm-attn-bar">{buttons}<label class="ftm-attn-mode">'
        f'<input type="checkbox" class="ftm-attn-received"> attention received (else: paid)</label></div>'
        f'<div class="ftm-attn-tokens">{spans}</div>'
        f'<div class="ftm-attn-readout">hover a token (click to pin it)</div>'
        f'<div class="ftm-attn-grid"></div>'
        f'<script type="application/json" class="ftm-attn-data">{payload}</script>'
        f"<script>{_JS.replace('__ID__', wid)}</script>"
        f"</div>")
    text = " ".join(tokens)
    summary = (f"attention patterns of {', '.join(head_names)} on {text[:80] + ('…' if len(text) > 80 else '')!r} "
               f"(interactive in the HTML book and in Jupyter)")
    return AttentionPatterns(page, summary)
