"""The page's inline stylesheet and script (no framework, nothing fetched).

The script only enhances a page that already reads without it: it shows one component at a
time (selector, previous/next buttons, ← → keys), opens a component at a block when a flow-map
cell or any ``#component-K[-block-J]`` link is clicked, and keeps the URL fragment in step.
It reads ``<script type="application/json" id="report-data">`` with ``JSON.parse`` and writes
text only through ``textContent``.
"""

CSS = """
:root{--fg:#1b1b1b;--muted:#5f6368;--line:#dadce0;--accent:#1f5fa8;--hl:#f5a623}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:#fafafa}
header{padding:18px 28px;background:#fff;border-bottom:1px solid var(--line)}
header h1{margin:0;font-size:22px}
nav{padding:8px 28px;background:#fff;border-bottom:1px solid var(--line);font-size:13px}
nav a{margin-right:10px}
main{padding:0 28px 40px;max-width:1500px}
section{margin-top:22px}
section.component{background:#fff;border:1px solid var(--line);border-radius:6px;
padding:4px 16px 12px;margin-top:14px}
h2{font-size:19px;border-bottom:2px solid var(--line);padding-bottom:4px}
h3{font-size:16px}h3 small{font-weight:normal;color:var(--muted);font-size:13px;margin-left:8px}
h4{font-size:14px;margin:12px 0 6px}h4 small{font-weight:normal;color:var(--muted);font-size:12px}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
a.up{float:right;font-size:12px;font-weight:normal}
.note{color:var(--muted);font-size:12px;margin:4px 0}
.note.warn{color:inherit;border-left:3px solid #b35806;padding:2px 8px}
.name{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}
dl.meta dt{font-weight:600}dl.meta dd{margin:0;word-break:break-word}
table{border-collapse:collapse;font-size:13px;background:#fff}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.scan tr.chosen td{background:#fff1d6;font-weight:600}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
figure{margin:0}figcaption{font-size:12px;color:var(--muted);margin-bottom:4px}
img{max-width:100%;height:auto}
img.px{image-rendering:pixelated;image-rendering:crisp-edges}
.flowwrap{overflow-x:auto}
table.flow{table-layout:fixed}
table.flow th.name{font-weight:600;font-size:12px;max-width:120px}
table.flow td.cell{padding:0;text-align:right;font-variant-numeric:tabular-nums;min-width:60px}
table.flow td.cell a{display:block;color:inherit;padding:3px 8px}
table.flow td.cell a:hover,table.flow td.cell a:focus{outline:2px solid var(--hl);
outline-offset:-2px;text-decoration:none}
table.flow td.total{font-weight:600}
table.flow.flow-compact th,table.flow.flow-compact td{padding:0 6px;font-size:10px;line-height:1}
table.flow.flow-compact td.cell a{font-size:0;height:12px;padding:0}
table.flow.flow-tiny th,table.flow.flow-tiny td{padding:0 4px;font-size:8px;line-height:1}
table.flow.flow-tiny td.cell a{font-size:0;height:7px;padding:0}
table.flow.flow-tiny td.cell,table.flow.flow-compact td.cell{min-width:44px}
table.flow tr.current th{background:#fff1d6}
table.flow tr.current td.cell{box-shadow:inset 0 2px 0 var(--hl),inset 0 -2px 0 var(--hl)}
.toolbar{display:none;position:sticky;top:0;z-index:5;background:#fff;gap:10px;align-items:center;
flex-wrap:wrap;padding:8px 10px;border:1px solid var(--line);border-radius:6px;margin:8px 0}
.toolbar select{font:inherit;max-width:420px}
.toolbar button{font:inherit;padding:2px 10px;cursor:pointer}
#component-status{font-weight:600}
html.js .toolbar{display:flex}
html.js section.component{display:none}
html.js section.component.current{display:block}
section.component,.card.block{scroll-margin-top:64px}
.cgrid{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:6px 10px 8px}
.card h4{margin:2px 0 6px}
.card.focus{outline:3px solid var(--hl);outline-offset:1px}
.pair{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.pair img{margin-right:4px}
.layers{display:grid;grid-template-columns:repeat(auto-fill,minmax(310px,1fr));gap:12px}
.layers .card.weak{opacity:.55}
.meter{height:5px;background:#eef2f7;border-radius:3px;margin:0 0 6px}
.meter span{display:block;height:5px;background:#3182bd;border-radius:3px}
.chtiles{display:flex;flex-wrap:wrap;gap:6px;margin-top:6px}
.chtiles figcaption{font-size:11px;text-align:center;margin:1px 0 0}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}
.thumbs.strips{flex-direction:column;gap:4px}
.thumbs.strips figure{display:flex;gap:10px;align-items:center}
.thumb figcaption{font-size:11px;text-align:center;margin:2px 0 0;color:var(--fg)}
.thumbs.strips .thumb figcaption{text-align:left}
.thumb .lab{color:var(--accent)}
svg.chart{display:block;font-size:10px;overflow:visible}
svg.chart text.lab{fill:#333}svg.chart text.val{fill:#555}
svg.chart rect.hit{fill:transparent}svg.chart g.row:hover rect.hit{fill:#eef4fb}
svg.chart line.axis{stroke:#888;stroke-width:1}
svg.chart line.mark{stroke:#111;stroke-width:2}
svg.chart a:hover text.lab{fill:var(--accent);text-decoration:underline}
table.tracks td{text-align:center;vertical-align:middle;padding:3px 5px}
table.tracks td.none{color:#aaa}
table.tracks figure figcaption{margin:2px 0 0;font-size:11px;color:inherit}
table.tracks figure figcaption a{color:inherit;text-decoration:underline}
footer{padding:16px 28px;color:var(--muted);font-size:12px}
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var sections = Array.prototype.slice.call(document.querySelectorAll("section.component"));
  var R = sections.length;
  var select = document.getElementById("component-select");
  var status = document.getElementById("component-status");
  if (!R || !select || !status) { return; }
  var flowRows = {};
  Array.prototype.forEach.call(document.querySelectorAll("#flow tr[data-r]"), function (tr) {
    flowRows[tr.getAttribute("data-r")] = tr;
  });
  var current = -1;
  var focused = null;
  var pattern = /^#component-(\d+)(?:-block-(\d+))?$/;

  function show(r, block, scroll) {
    r = Math.max(0, Math.min(R - 1, r));
    if (r !== current) {
      if (current >= 0) {
        sections[current].classList.remove("current");
        if (flowRows[current]) { flowRows[current].classList.remove("current"); }
      }
      sections[r].classList.add("current");
      if (flowRows[r]) { flowRows[r].classList.add("current"); }
      current = r;
      select.value = String(r);
    }
    if (focused) { focused.classList.remove("focus"); focused = null; }
    var where = "";
    if (block !== null) {
      var card = document.getElementById("component-" + (r + 1) + "-block-" + block);
      if (card) {
        card.classList.add("focus");
        focused = card;
        where = " \u00b7 at " + (data.blocks[block] === undefined ? "" : data.blocks[block]);
        if (scroll) { card.scrollIntoView({block: "center"}); }
      }
    } else if (scroll) {
      sections[r].scrollIntoView({block: "start"});
    }
    status.textContent = "C" + (r + 1) + " of " + R + where;
  }

  function parse(hash) {
    var m = pattern.exec(hash || "");
    if (!m) { return null; }
    return {r: parseInt(m[1], 10) - 1, block: m[2] === undefined ? null : parseInt(m[2], 10)};
  }

  function setHash(hash, push) {
    try {
      if (push) { history.pushState(null, "", hash); } else { history.replaceState(null, "", hash); }
    } catch (e) { /* some file:// settings refuse; the view still changes */ }
  }

  function step(delta) {
    show(current + delta, null, false);
    setHash("#component-" + (current + 1), false);
    var top = sections[current].getBoundingClientRect().top;
    if (top < 0 || top > window.innerHeight * 0.7) { sections[current].scrollIntoView({block: "start"}); }
  }

  document.addEventListener("click", function (e) {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) { return; }
    var a = e.target.closest ? e.target.closest("a") : null;
    if (!a) { return; }
    var href = a.getAttribute("href") || a.getAttribute("xlink:href");
    var where = parse(href);
    if (!where) { return; }
    e.preventDefault();
    show(where.r, where.block, true);
    setHash(href, true);
  });
  window.addEventListener("hashchange", function () {
    var where = parse(window.location.hash);
    if (where) { show(where.r, where.block, true); }
  });
  window.addEventListener("popstate", function () {
    var where = parse(window.location.hash);
    if (where) { show(where.r, where.block, true); }
  });
  select.addEventListener("change", function () {
    show(parseInt(select.value, 10), null, false);
    setHash("#component-" + (current + 1), false);
    select.blur();
  });
  document.getElementById("component-prev").addEventListener("click", function () { step(-1); });
  document.getElementById("component-next").addEventListener("click", function () { step(1); });
  document.addEventListener("keydown", function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey) { return; }
    var t = e.target;
    var tag = t && t.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (t && t.isContentEditable)) {
      return;
    }
    if (e.key === "ArrowRight") { e.preventDefault(); step(1); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
  });

  var start = parse(window.location.hash);
  if (start) { show(start.r, start.block, true); } else { show(0, null, false); }
  document.body.setAttribute("data-ready", "1");
})();
"""
