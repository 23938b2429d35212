/* factorlens report: the component explorer. The page reads without it; this shows one
   component at a time (selector, previous/next, arrow keys), opens a component at a block when
   a flow-map cell or any #component-K[-block-J] link is clicked (the component's pattern and
   strengths stay on screen, sticky, above the layer cards), keeps the URL fragment in step,
   and closes a test input's view with Esc. It reads the JSON data block with JSON.parse and
   writes text only through textContent. */
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
    var head = sections[r].querySelector(".chead");
    if (head) {
      document.documentElement.style.setProperty("--chead", head.offsetHeight + "px");
    }
    var where = "";
    if (block !== null) {
      var card = document.getElementById("component-" + (r + 1) + "-block-" + block);
      if (card) {
        card.classList.add("focus");
        focused = card;
        where = " \u00b7 at " + (data.blocks[block] === undefined ? "" : data.blocks[block]);
        if (scroll) { card.scrollIntoView({block: "start"}); }
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
    var active = document.activeElement;  // a clicked flow cell would keep its focus outline
    if (active && active.closest && active.closest("#flow")) { active.blur(); }
    show(current + delta, null, false);
    setHash("#component-" + (current + 1), false);
    var top = sections[current].getBoundingClientRect().top;
    if (top < 0 || top > window.innerHeight * 0.7) { sections[current].scrollIntoView({block: "start"}); }
  }

  var openedInput = false;
  function closeInput() {
    if (openedInput) { openedInput = false; history.back(); return true; }
    return false;
  }
  document.addEventListener("click", function (e) {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) { return; }
    var a = e.target.closest ? e.target.closest("a") : null;
    if (!a) { return; }
    if (a.classList.contains("close") && closeInput()) { e.preventDefault(); return; }
    if (/^#input-\d+$/.test(a.getAttribute("href") || "")) { openedInput = true; return; }
    var href = a.getAttribute("href") || a.getAttribute("xlink:href");
    var where = parse(href);
    if (!where) { return; }
    e.preventDefault();
    if (/^#input-/.test(window.location.hash)) {
      // leaving a test input's view: a real hash change, so that :target lets go of it
      openedInput = false;
      window.location.hash = href;
      return;
    }
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
    if (e.key === "Escape" && /^#input-/.test(window.location.hash)) {
      e.preventDefault();
      if (!closeInput()) { window.location.hash = "#component-" + (current + 1); }
      return;
    }
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

/* The flow map's stages (a network of many blocks): ▾ collapses a stage into one column that
   shows each component's strongest block in it, ▸ expands it again; one button does all. */
(function () {
  "use strict";
  var table = document.querySelector("#flow table.flow[data-stages]");
  if (!table) { return; }
  var count = parseInt(table.getAttribute("data-stages"), 10);
  function setStage(g, open) {
    Array.prototype.forEach.call(table.querySelectorAll('[data-g="' + g + '"]'), function (el) {
      if (el.tagName === "BUTTON") { return; }
      var summary = el.classList.contains("gsum");
      el.hidden = open ? summary : !summary;
    });
  }
  table.addEventListener("click", function (e) {
    var b = e.target.closest ? e.target.closest("button") : null;
    if (!b) { return; }
    if (b.classList.contains("stage-toggle")) {
      setStage(b.getAttribute("data-g"), b.getAttribute("aria-expanded") === "false");
    } else if (b.classList.contains("stage-all")) {
      var open = b.getAttribute("data-open") !== "yes";
      for (var g = 0; g < count; g++) { setStage(g, open); }
      b.setAttribute("data-open", open ? "yes" : "no");
      b.textContent = open ? "collapse all" : "expand all";
    }
  });
})();
