/* tokbench report viewer: sortable result tables and the sample viewer (originals and reconstructions side
 * by side, synchronised zoom, difference view, sorting and filtering). The project's own code (Apache-2.0);
 * it loads nothing from the network and runs from a page opened from disk.
 *
 * The page holds its data in <script type="application/json" id="viewer-data">; every text from it is put in
 * the page as text (textContent), never as markup.
 */
(function () {
  "use strict";

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children || []) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    return node;
  }

  // ---------------------------------------------------------------------------------------------
  // Sortable tables: a click (or Enter) on a header sorts by that column; again reverses. Cells sort by their
  // data-sort number where they have one, else by their text; empty cells stay last either way.

  function cellKey(td) {
    if (!td) return { empty: true };
    const n = td.getAttribute("data-sort");
    if (n !== null && n !== "" && !isNaN(parseFloat(n))) return { num: parseFloat(n) };
    const t = td.textContent.trim();
    return t === "" ? { empty: true } : { text: t };
  }

  function compareKeys(a, b) {
    if ("num" in a && "num" in b) return a.num - b.num;
    if ("num" in a) return -1;
    if ("num" in b) return 1;
    return a.text.localeCompare(b.text, undefined, { numeric: true, sensitivity: "base" });
  }

  function sortTable(table, col, th) {
    const body = table.tBodies[0];
    if (!body) return;
    const ascending = th.getAttribute("aria-sort") !== "ascending";
    for (const other of th.parentNode.cells) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const rows = Array.from(body.rows, (r, i) => ({ r, i, k: cellKey(r.cells[col]) }));
    rows.sort((x, y) => {
      if (x.k.empty || y.k.empty) return x.k.empty && y.k.empty ? x.i - y.i : (x.k.empty ? 1 : -1);
      const c = compareKeys(x.k, y.k);
      return (ascending ? c : -c) || x.i - y.i;
    });
    for (const x of rows) body.appendChild(x.r);
  }

  function makeSortable(table) {
    const head = table.tHead;
    if (!head || !head.rows.length) return;
    Array.from(head.rows[head.rows.length - 1].cells).forEach((th, col) => {
      th.classList.add("sortable");
      th.tabIndex = 0;
      const go = () => sortTable(table, col, th);
      th.addEventListener("click", go);
      th.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); }
      });
    });
  }

  // ---------------------------------------------------------------------------------------------
  // The sample viewer

  const MAX_ZOOM = 64;

  function startViewer(holder, data) {
    const columns = data.columns || [];
    const metrics = data.metrics || [];
    const byKey = new Map(metrics.map((m) => [m.key, m]));
    const state = { size: data.size || 256, mode: "recon", sort: "", sortColumn: "", hidden: new Set() };
    const zooms = new Map(); // sample key -> {cx, cy, z}: the centre (fractions of the image) and magnification

    // -- controls
    const sortSelect = el("select", { id: "viewer-sort" }, [el("option", { value: "", text: "data-set order" })]);
    for (const m of metrics) {
      const [first, second] = m.better === "lower" ? ["worst first", "best first"]
        : m.better === "higher" ? ["worst first", "best first"] : ["high first", "low first"];
      const firstDesc = m.better === "lower" || !m.better;
      sortSelect.appendChild(el("option", { value: `${m.key}|${firstDesc ? "desc" : "asc"}`, text: `${m.label}: ${first}` }));
      sortSelect.appendChild(el("option", { value: `${m.key}|${firstDesc ? "asc" : "desc"}`, text: `${m.label}: ${second}` }));
    }
    const columnSelect = el("select", { id: "viewer-sort-column" },
      [el("option", { value: "", text: "the worst of the shown columns" })]);
    for (const c of columns) columnSelect.appendChild(el("option", { value: c.id, text: c.label }));
    const modeSelect = el("select", { id: "viewer-mode" }, [
      el("option", { value: "recon", text: "reconstructions" }),
      el("option", { value: "diff", text: "absolute error (heat map)" })]);
    const sizeSelect = el("select", { id: "viewer-size" });
    for (const s of [128, 192, 256, 384, 512]) {
      sizeSelect.appendChild(el("option", { value: s, text: `${s} px`, selected: s === state.size }));
    }
    const resetAll = el("button", { type: "button", id: "viewer-fit-all", text: "fit all" });
    const legend = el("span", { class: "legend", hidden: true }, data.diff_legend ? [
      el("span", { text: data.diff_scale_low || "0" }), el("img", { src: data.diff_legend, alt: "colour scale" }),
      el("span", { text: data.diff_scale_high || "" })] : []);
    const controls = el("div", { class: "controls" }, [
      el("label", {}, ["sort images by ", sortSelect]), el("label", {}, [" in ", columnSelect]),
      el("label", {}, ["show ", modeSelect]), legend, el("label", {}, ["cell ", sizeSelect]), resetAll]);
    holder.appendChild(controls);

    // -- filters: one group per tokenizer, a box per sweep point (and run)
    const filters = el("div", { class: "filters" });
    const groups = new Map();
    for (const c of columns) {
      if (!groups.has(c.tokenizer)) groups.set(c.tokenizer, []);
      groups.get(c.tokenizer).push(c);
    }
    for (const [tok, cols] of groups) {
      const all = el("input", { type: "checkbox", checked: true, "data-filter-tokenizer": tok });
      const set = el("fieldset", {}, [el("legend", {}, [el("label", {}, [all, " " + tok])])]);
      const boxes = [];
      if (cols.length > 1 || cols[0].point) {
        for (const c of cols) {
          const box = el("input", { type: "checkbox", checked: true, "data-filter-column": c.id });
          boxes.push(box);
          set.appendChild(el("label", {}, [box, " " + (c.point || c.label)]));
          box.addEventListener("change", () => {
            if (box.checked) state.hidden.delete(c.id); else state.hidden.add(c.id);
            all.checked = boxes.some((b) => b.checked);
            all.indeterminate = all.checked && boxes.some((b) => !b.checked);
            applyFilter();
          });
        }
      }
      all.addEventListener("change", () => {
        for (const c of cols) { if (all.checked) state.hidden.delete(c.id); else state.hidden.add(c.id); }
        for (const b of boxes) b.checked = all.checked;
        all.indeterminate = false;
        applyFilter();
      });
      filters.appendChild(set);
    }
    holder.appendChild(filters);
    if (data.note) holder.appendChild(el("p", { class: "note", text: data.note }));

    // -- one block per image
    const list = el("div", { class: "samples" });
    holder.appendChild(list);
    const samples = [];
    (data.images || []).forEach((img, order) => {
      const block = el("div", { class: "sample", "data-key": img.key, "data-position": img.position });
      const level = el("span", { class: "zoom-level" });
      const fit = el("button", { type: "button", class: "fit", text: "fit" });
      block.appendChild(el("div", { class: "sample-head" }, [
        el("span", { class: "name", text: img.id }), el("span", { class: "where", text: img.where || "" }),
        level, fit]));
      if (img.crops && img.crops.length) {
        const crops = el("div", { class: "crops" }, [el("span", { class: "what", text: img.crops_label || "text:" })]);
        for (const crop of img.crops) {
          const b = el("button", { type: "button", class: "crop", text: crop.text, title: crop.title || null });
          b.addEventListener("click", () => zoomToBox(sample, crop.box));
          crops.appendChild(b);
        }
        block.appendChild(crops);
      }
      const cellsDiv = el("div", { class: "cells" });
      block.appendChild(cellsDiv);
      const sample = { img, block, order, level, cells: [] };
      for (const o of img.originals || []) {
        sample.cells.push(makeCell(sample, cellsDiv, { original: true, label: o.label, title: o.title, src: o.src }));
      }
      for (const c of columns) {
        const cell = img.cells[c.id];
        if (!cell) continue;
        sample.cells.push(makeCell(sample, cellsDiv, { column: c, label: c.label, title: c.title, src: cell.src,
          diff: cell.diff, values: cell.values || {}, missing: cell.missing }));
      }
      fit.addEventListener("click", () => { zooms.delete(img.key); applyZoom(sample); });
      samples.push(sample);
      list.appendChild(block);
    });
    if (!samples.length) list.appendChild(el("p", { class: "empty", text: data.empty || "no sample images saved" }));

    function makeCell(sample, parent, spec) {
      const vp = el("div", { class: "vp" });
      const fig = el("figure", { class: "cell", "data-col": spec.column ? spec.column.id : "original",
        title: spec.title || null }, [vp]);
      let img = null;
      if (spec.src) {
        img = el("img", { src: spec.src, alt: spec.label, draggable: "false" });
        img.addEventListener("load", () => applyZoom(sample));
        vp.appendChild(img);
      } else {
        vp.appendChild(el("div", { class: "missing", text: spec.missing || "no image saved" }));
      }
      const caption = el("figcaption", {}, [el("div", { class: "label" + (spec.original ? " original" : ""),
        text: spec.label })]);
      const values = el("div", { class: "values" });
      for (const m of metrics) {
        const v = (spec.values || {})[m.key];
        if (!v || !m.show) continue;
        if (values.childNodes.length) values.appendChild(document.createTextNode(" \u00b7 "));
        values.appendChild(el("span", { "data-metric": m.key, text: `${m.short || m.label} ${v[1]}` }));
      }
      caption.appendChild(values);
      const extra = Object.keys(spec.values || {}).filter((k) => byKey.has(k))
        .map((k) => `${byKey.get(k).label}: ${spec.values[k][1]}`);
      if (extra.length) values.title = extra.join("\n");
      fig.appendChild(caption);
      parent.appendChild(fig);
      const cell = { fig, vp, img, spec };
      attachZoom(sample, cell);
      return cell;
    }

    // -- zoom: the same region of every column of one image
    function zoomOf(sample) { return zooms.get(sample.img.key) || { cx: 0.5, cy: 0.5, z: 1 }; }

    function clampZoom(z) {
      z.z = Math.min(Math.max(z.z, 1), MAX_ZOOM);
      const half = 0.5 / z.z;
      z.cx = Math.min(Math.max(z.cx, half), 1 - half);
      z.cy = Math.min(Math.max(z.cy, half), 1 - half);
      return z;
    }

    function setZoom(sample, z) {
      zooms.set(sample.img.key, clampZoom(z));
      applyZoom(sample);
    }

    function applyZoom(sample) {
      const z = zoomOf(sample);
      let ratio = null;
      for (const cell of sample.cells) {
        const W = state.size;
        const img = cell.img;
        const aspect = img && img.naturalWidth ? img.naturalHeight / img.naturalWidth : 1;
        const H = Math.round(W * aspect);
        cell.vp.style.width = W + "px";
        cell.vp.style.height = H + "px";
        cell.fig.style.width = W + 2 + "px";
        if (!img) continue;
        img.style.width = W * z.z + "px";
        img.style.height = H * z.z + "px";
        img.style.left = W / 2 - z.cx * W * z.z + "px";
        img.style.top = H / 2 - z.cy * H * z.z + "px";
        if (img.naturalWidth) {
          const r = (W * z.z * (window.devicePixelRatio || 1)) / img.naturalWidth;
          img.classList.toggle("pixelated", r >= 1.5);
          if (ratio === null || r < ratio) ratio = r;
        }
      }
      sample.level.textContent = z.z === 1 ? "" : `zoom x${z.z.toFixed(z.z < 10 ? 1 : 0)}` +
        (ratio ? ` (${ratio >= 1 ? ratio.toFixed(1) + ":1" : "1:" + (1 / ratio).toFixed(1)} screen:image pixels)` : "");
    }

    function pointOf(cell, e) { // the image fraction under the pointer
      const r = cell.img.getBoundingClientRect();
      return { x: (e.clientX - r.left) / r.width, y: (e.clientY - r.top) / r.height };
    }

    function attachZoom(sample, cell) {
      if (!cell.img) return;
      let drag = null;
      cell.vp.addEventListener("pointerdown", (e) => {
        if (e.button !== 0) return;
        drag = { x: e.clientX, y: e.clientY, start: { ...zoomOf(sample) }, moved: false };
        cell.vp.setPointerCapture && cell.vp.setPointerCapture(e.pointerId);
      });
      cell.vp.addEventListener("pointermove", (e) => {
        if (!drag) return;
        const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
        if (!drag.moved && Math.hypot(dx, dy) < 4) return;
        drag.moved = true;
        cell.vp.classList.add("dragging");
        const W = cell.vp.clientWidth, H = cell.vp.clientHeight, s = drag.start;
        setZoom(sample, { cx: s.cx - dx / (W * s.z), cy: s.cy - dy / (H * s.z), z: s.z });
      });
      const end = (e) => {
        if (!drag) return;
        const moved = drag.moved;
        drag = null;
        cell.vp.classList.remove("dragging");
        if (moved || e.type !== "pointerup") return;
        const p = pointOf(cell, e), z = zoomOf(sample);
        setZoom(sample, { cx: p.x, cy: p.y, z: e.shiftKey || e.altKey ? z.z / 2 : z.z * 2 });
      };
      cell.vp.addEventListener("pointerup", end);
      cell.vp.addEventListener("pointercancel", end);
      cell.vp.addEventListener("wheel", (e) => {
        e.preventDefault();
        const z = zoomOf(sample), p = pointOf(cell, e);
        const nz = Math.min(Math.max(z.z * (e.deltaY < 0 ? 1.25 : 0.8), 1), MAX_ZOOM);
        // keep the image point under the pointer where it is
        const r = cell.vp.getBoundingClientRect();
        const fx = (e.clientX - r.left) / r.width, fy = (e.clientY - r.top) / r.height;
        setZoom(sample, { cx: p.x - (fx - 0.5) / nz, cy: p.y - (fy - 0.5) / nz, z: nz });
      }, { passive: false });
    }

    function zoomToBox(sample, box) {
      const [x0, y0, x1, y1] = box;
      const z = 0.8 / Math.max(x1 - x0, y1 - y0, 1 / MAX_ZOOM);
      setZoom(sample, { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, z });
    }

    // -- filter, mode, sort, size
    function applyFilter() {
      for (const s of samples) {
        for (const cell of s.cells) {
          if (cell.spec.column) cell.fig.hidden = state.hidden.has(cell.spec.column.id);
        }
      }
      if (state.sort) applySort();
    }

    function applyMode() {
      legend.hidden = state.mode !== "diff";
      for (const s of samples) {
        for (const cell of s.cells) {
          if (!cell.img || !cell.spec.column) continue;
          const src = state.mode === "diff" && cell.spec.diff ? cell.spec.diff : cell.spec.src;
          if (cell.img.getAttribute("src") !== src) cell.img.setAttribute("src", src);
        }
      }
    }

    function sortValue(sample, key, better) {
      const values = [];
      for (const c of columns) {
        if (state.sortColumn ? c.id !== state.sortColumn : state.hidden.has(c.id)) continue;
        const cell = sample.img.cells[c.id];
        const v = cell && cell.values && cell.values[key];
        if (v && typeof v[0] === "number" && isFinite(v[0])) values.push(v[0]);
      }
      if (!values.length) return null;
      return better === "lower" ? Math.max(...values) : Math.min(...values); // the worst of them
    }

    function applySort() {
      let ordered = samples.slice();
      for (const s of samples) {
        for (const span of s.block.querySelectorAll(".values .sorted")) span.classList.remove("sorted");
      }
      if (state.sort) {
        const [key, dir] = state.sort.split("|");
        const better = (byKey.get(key) || {}).better;
        const keyed = samples.map((s) => ({ s, v: sortValue(s, key, better) }));
        keyed.sort((a, b) => {
          if (a.v === null || b.v === null) return a.v === null && b.v === null ? a.s.order - b.s.order : (a.v === null ? 1 : -1);
          return (dir === "asc" ? a.v - b.v : b.v - a.v) || a.s.order - b.s.order;
        });
        ordered = keyed.map((k) => k.s);
        for (const s of samples) {
          for (const span of s.block.querySelectorAll(`.values [data-metric="${CSS.escape(key)}"]`)) span.classList.add("sorted");
        }
      }
      for (const s of ordered) list.appendChild(s.block);
    }

    sortSelect.addEventListener("change", () => { state.sort = sortSelect.value; applySort(); });
    columnSelect.addEventListener("change", () => { state.sortColumn = columnSelect.value; applySort(); });
    modeSelect.addEventListener("change", () => { state.mode = modeSelect.value; applyMode(); });
    sizeSelect.addEventListener("change", () => {
      state.size = parseInt(sizeSelect.value, 10);
      for (const s of samples) applyZoom(s);
    });
    resetAll.addEventListener("click", () => { zooms.clear(); for (const s of samples) applyZoom(s); });
    for (const s of samples) applyZoom(s);
    holder.setAttribute("data-ready", "1");
  }

  function start() {
    for (const table of document.querySelectorAll("table.sortable")) makeSortable(table);
    const holder = document.getElementById("viewer");
    const source = document.getElementById("viewer-data");
    if (holder && source) startViewer(holder, JSON.parse(source.textContent));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
