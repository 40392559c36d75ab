// raysearch-adapters dashboard: draws one view (JSON from /api/view, or embedded in a report).
// Live: polls every few seconds and redraws only when the results folder changed.
// All text from the results files goes in through textContent, never as HTML.
(function () {
  "use strict";

  const script = document.currentScript;
  const POLL_MS = 1000 * Number((script && script.dataset.pollSeconds) || 3);
  const embedded = document.getElementById("rsa-view");
  const PLOT_CONFIG = { responsive: true, displaylogo: false };
  const TEXT_COLUMNS = new Set(["trial_id", "status", "type", "targets", "blocks", "position", "device", "error"]);
  const FIXED_2 = new Set(["wer", "dev_wer_new", "dev_wer_original", "adapter_percent", "dropout", "stochastic_depth"]);
  let lastFingerprint = null;
  let renderCount = 0;
  let sortKey = null;
  let sortAsc = true;
  // The trial table's adapter-type filter ("all" or a type) survives a redraw.
  let typeFilter = "all";
  // "Fixed and broken": the filters and how many utterances are shown survive a redraw.
  const UTTERANCES_PER_PAGE = 25;
  const fbFilter = { domain: "all", split: "all", outcome: "all" };
  let fbShown = UTTERANCES_PER_PAGE;
  const OP_TITLES = { "=": "right", S: "substituted", D: "deleted", I: "inserted", "": "" };

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function fmt(value, key) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (typeof value !== "number") return String(value);
    if (["lr", "weight_decay", "l2_lambda"].includes(key)) return value === 0 ? "0" : value.toExponential(1);
    if (key === "wall_time_s") return value.toFixed(0);
    if (["degradation", "degradation_lower", "degradation_upper"].includes(key)) return (value > 0 ? "+" : "") + value.toFixed(2);
    // WERs and fractions keep two decimals even when whole (20.00, not 20); counts stay integers.
    if (FIXED_2.has(key) || !Number.isInteger(value)) return value.toFixed(2);
    return String(value);
  }

  function setState(state, updated) {
    const badge = document.getElementById("state");
    badge.textContent = state;
    badge.className = "badge " + state;
    document.getElementById("updated").textContent = updated || "";
  }

  function renderMessages(errors, notes) {
    const list = document.getElementById("messages");
    list.replaceChildren(...errors.map((m) => el("li", { class: "error" }, m)), ...notes.map((m) => el("li", {}, m)));
  }

  function bounds(low, high) {
    return low === undefined || low === null || high === undefined || high === null ? ""
      : ` [${fmt(low, "degradation")}, ${fmt(high, "degradation")}]`;
  }

  function renderSummary(s) {
    const box = document.getElementById("summary");
    const parts = [];
    const units = s.units || "WER points";
    const held = s.feasibility === "upper"
      ? `the upper ${100 * s.confidence} % confidence bound of the original-domain dev degradation`
      : "original-domain dev degradation";
    const kappa = s.degradation_limit === null ? "κ not known yet"
      : `feasible = ${held} ≤ κ = ${s.degradation_limit} ${units}` +
        (s.kappa_mode ? ` (kappa ${s.kappa}, ${s.kappa_mode})` : "") +
        (s.max_new_loops === null || s.max_new_loops === undefined ? ""
          : s.max_new_loops === 0 ? ", no original-domain dev transcript newly looping"
          : `, at most ${s.max_new_loops} original-domain dev transcript${s.max_new_loops > 1 ? "s" : ""} newly looping`);
    const c = s.counts;
    parts.push(el("p", {}, `${c.total} trials: ${c.COMPLETE} complete, ${c.PRUNED} pruned by ASHA, ` +
      `${c.FAIL} failed, ${c.RUNNING} running. ${kappa}.`));
    if (s.rows.length) {
      const table = el("table", { id: "summary-table" });
      const head = el("tr");
      const sets = s.sets && s.sets.length ? s.sets : ["new", "original"];
      const cols = ["dev", "test"].flatMap((split) => sets.map((name) => [split, name]));
      ["WER %", ...cols.map(([split, name]) => `${split} ${name}`)].forEach((h, i) =>
        head.appendChild(el("th", i === 0 ? { class: "text" } : {}, h)));
      table.appendChild(el("thead")).appendChild(head);
      const body = table.appendChild(el("tbody"));
      s.rows.forEach((r) => {
        const tr = body.appendChild(el("tr"));
        tr.appendChild(el("td", { class: "text" }, r.label));
        cols.forEach(([split, name]) => tr.appendChild(el("td", {}, fmt((r[split] || {})[name], "wer"))));
      });
      parts.push(table);
    }
    if (s.winner) {
      const w = s.winner;
      const hp = Object.entries(w.hparams || {}).map(([k, v]) => `${k}=${fmt(v, k)}`).join(", ");
      parts.push(el("p", { class: "winner-params" },
        `trial ${w.trial_id}: ${hp}; adapter ${fmt(w.adapter_params)} params (${fmt(w.adapter_percent, "adapter_percent")} % of the ` +
        `base model); degradation${s.several_protected && w.binding_set ? ` of ${w.binding_set} (the binding set)` : ""} ` +
        `${fmt(w.degradation, "degradation")}${bounds(w.degradation_lower, w.degradation_upper)} on dev` +
        (w.test_degradation === undefined || w.test_degradation === null ? "" :
          `, ${fmt(w.test_degradation, "degradation")}${bounds(w.test_degradation_lower, w.test_degradation_upper)} on test`) +
        (w.degradation_upper === undefined || w.degradation_upper === null ? "" :
          ` ([lower, upper]: one-sided ${100 * s.confidence} % confidence bounds)`)));
    }
    if (s.per_type && s.per_type.length) parts.push(perTypeTable(s.per_type));
    if (s.note) parts.push(el("p", { class: "chart-note" }, s.note));
    if (s.versions) {
      parts.push(el("p", { class: "chart-note" }, "versions: " +
        Object.entries(s.versions).map(([k, v]) => `${k} ${v}`).join(", ")));
    }
    box.replaceChildren(...parts);
  }

  // The best feasible trial of each adapter type (dev): the types compared at their own best.
  function perTypeTable(perType) {
    const table = el("table", { id: "per-type-table" });
    table.appendChild(el("caption", {}, "best feasible trial per adapter type (dev)"));
    const head = el("tr");
    ["type", "trial", "dev WER new", "degradation", "adapter params", "% of base", "config"].forEach((h, i) =>
      head.appendChild(el("th", [0, 1, 6].includes(i) ? { class: "text" } : {}, h)));
    table.appendChild(el("thead")).appendChild(head);
    const body = table.appendChild(el("tbody"));
    perType.forEach((r) => {
      const tr = body.appendChild(el("tr"));
      tr.appendChild(el("td", { class: "text" }, r.type));
      tr.appendChild(el("td", { class: "text" }, r.trial_id));
      tr.appendChild(el("td", {}, fmt(r.dev_wer_new, "wer")));
      tr.appendChild(el("td", {}, fmt(r.degradation, "degradation")));
      tr.appendChild(el("td", {}, fmt(r.adapter_params)));
      tr.appendChild(el("td", {}, fmt(r.adapter_percent, "adapter_percent")));
      tr.appendChild(el("td", { class: "text" },
        Object.entries(r.hparams || {}).filter(([k]) => k !== "type").map(([k, v]) => `${k}=${fmt(v, k)}`).join(", ")));
    });
    return table;
  }

  function renderChart(key, fig) {
    const box = document.getElementById("chart-" + key);
    if (!box) return Promise.resolve();
    let plot = box.querySelector(".plot");
    if (!plot) {
      plot = box.appendChild(el("div", { class: "plot" }));
      box.appendChild(el("p", { class: "chart-message" })).hidden = true;
      box.appendChild(el("p", { class: "chart-note" })).hidden = true;
    }
    const message = box.querySelector(".chart-message");
    const note = box.querySelector(".chart-note");
    note.hidden = !fig.note;
    note.textContent = fig.note || "";
    if (fig.message) {
      Plotly.purge(plot);
      message.hidden = false;
      message.textContent = fig.message;
      box.dataset.state = "message";
      return Promise.resolve();
    }
    message.hidden = true;
    box.dataset.state = "chart";
    return Plotly.react(plot, fig.data, fig.layout, PLOT_CONFIG);
  }

  function compare(a, b) {
    // Empty cells last whatever the direction.
    if (a === null || a === undefined) return b === null || b === undefined ? 0 : 1;
    if (b === null || b === undefined) return -1;
    const order = a < b ? -1 : a > b ? 1 : 0;
    return sortAsc ? order : -order;
  }

  function renderTrials(t) {
    const table = document.getElementById("trials");
    const head = el("tr");
    t.columns.forEach((c) => {
      const th = el("th", { title: c.doc, "data-key": c.key, class: TEXT_COLUMNS.has(c.key) ? "text" : "" }, c.label);
      if (c.key === sortKey) th.classList.add(sortAsc ? "sorted-asc" : "sorted-desc");
      th.addEventListener("click", () => {
        sortAsc = sortKey === c.key ? !sortAsc : true;
        sortKey = c.key;
        renderTrials(t);
      });
      head.appendChild(th);
    });
    table.tHead.replaceChildren(head);
    document.getElementById("trial-count").textContent = t.note || "";
    renderTypeFilter(t);
    const typeIndex = t.columns.findIndex((c) => c.key === "type");
    const rows = t.rows.filter((row) => typeFilter === "all" || row[typeIndex] === typeFilter);
    const index = t.columns.findIndex((c) => c.key === sortKey);
    if (index >= 0) rows.sort((a, b) => compare(a[index], b[index]));
    table.tBodies[0].replaceChildren(...rows.map((row) => {
      const tr = el("tr");
      row.forEach((v, i) => {
        const key = t.columns[i].key;
        const cls = [TEXT_COLUMNS.has(key) ? "text" : ""];
        if (key === "status") cls.push("status-" + v);
        if (key === "feasible" && v !== null) cls.push("feasible-" + v);
        if (key === "error") cls.push("error-text");
        const td = el("td", { class: cls.join(" ").trim() }, fmt(v, key));
        if (key === "error" && v) td.title = v;
        tr.appendChild(td);
      });
      return tr;
    }));
  }

  // A select of the adapter types in the table; shown when the search tried more than one.
  function renderTypeFilter(t) {
    const box = document.getElementById("trial-filter");
    const typeIndex = t.columns.findIndex((c) => c.key === "type");
    const types = [...new Set(t.rows.map((row) => row[typeIndex]).filter((v) => v !== null))].sort();
    if (types.length < 2) {
      typeFilter = "all";
      box.replaceChildren();
      return;
    }
    if (typeFilter !== "all" && !types.includes(typeFilter)) typeFilter = "all";
    const select = el("select", { id: "trial-type", "aria-label": "adapter type" });
    select.replaceChildren(...["all", ...types].map((v) => option(v, v, typeFilter)));
    select.addEventListener("change", () => {
      typeFilter = select.value;
      renderTrials(t);
    });
    const wrap = el("label", {}, "adapter type ");
    wrap.appendChild(select);
    box.replaceChildren(wrap);
  }

  function option(value, label, selected) {
    const node = el("option", { value: value }, label);
    node.selected = value === selected;
    return node;
  }

  function filterSelect(key, label, values) {
    const select = el("select", { id: "fb-" + key, "aria-label": label });
    select.replaceChildren(...["all", ...values].map((v) => option(v, v, fbFilter[key])));
    select.addEventListener("change", () => {
      fbFilter[key] = select.value;
      fbShown = UTTERANCES_PER_PAGE;
      renderFixedBroken(lastFixedBroken);
    });
    const wrap = el("label", {}, label + " ");
    wrap.appendChild(select);
    return wrap;
  }

  // One cell of an alignment row: the words a model has at a reference word or gap, how it got them.
  function alignCell(op, words, ref, mark) {
    const cls = ["op-" + ({ "=": "eq", S: "sub", D: "del", I: "ins", "": "none" })[op]];
    if (mark) cls.push(mark);
    const text = op === "D" ? "—" : op === "I" ? "+" + words : words;
    const td = el("td", { class: cls.join(" ") }, text);
    if (op === "S") td.title = `substituted: ${ref} → ${words}`;
    if (op === "D") td.title = `deleted: ${ref}`;
    if (op === "I") td.title = `inserted: ${words}`;
    return td;
  }

  function alignment(u, hasWinner) {
    const table = el("table", { class: "align" });
    const rows = [["reference", (c) => {
      const td = el("td", { class: ["ref", c[0] === null ? "gap" : "", c[5]].join(" ").trim() }, c[0] === null ? "" : c[0]);
      if (c[5]) td.title = c[5] === "fixed" ? "fixed by the winner" : "broken by the winner";
      return td;
    }], ["base", (c) => alignCell(c[1], c[2], c[0], c[5] === "fixed" ? "was-wrong" : "")]];
    if (hasWinner) rows.push(["winner", (c) => alignCell(c[3], c[4], c[0], c[5])]);
    rows.forEach(([label, cell]) => {
      const tr = table.appendChild(el("tr", { class: "align-" + label }));
      tr.appendChild(el("th", { class: "text" }, label));
      u.grid.forEach((c) => tr.appendChild(cell(c)));
    });
    return table;
  }

  function utteranceCard(u, set) {
    const card = el("div", { class: "utt outcome-" + (u.outcome || "none"), "data-row": u.row, "data-id": u.id,
      "data-outcome": u.outcome || "", "data-domain": u.domain || "", "data-split": u.split || "" });
    const head = card.appendChild(el("div", { class: "utt-head" }));
    head.appendChild(el("span", { class: "utt-id" }, u.id));
    head.appendChild(el("span", { class: "utt-set" }, set.label));
    if (u.outcome) head.appendChild(el("span", { class: "badge outcome " + u.outcome }, u.outcome));
    // a transcript that repeats itself (zlib compression ratio > 2.4)
    if (u.winner_looping) head.appendChild(el("span", { class: "badge outcome broken looping" }, "winner loops"));
    if (u.base_looping) head.appendChild(el("span", { class: "badge outcome looping" }, "base loops"));
    const change = u.delta === null ? "" : ` → ${u.winner_errors} (${u.delta > 0 ? "+" : u.delta < 0 ? "−" : "±"}${Math.abs(u.delta)})`;
    head.appendChild(el("span", { class: "utt-errors" }, `word errors ${u.base_errors}${change} of ${u.words} words`));
    if (!embedded && u.audio) {
      const end = u.duration ? "," + (u.offset + u.duration).toFixed(3) : "";
      head.appendChild(el("audio", { controls: "", preload: "none", src: `audio/${u.row}#t=${u.offset.toFixed(3)}${end}` }));
    }
    const where = u.manifest.split("/").pop() + (u.line === null ? "" : `:${u.line}`);
    head.appendChild(el("span", { class: "utt-where", title: `${u.manifest}, line ${u.line}` }, where));
    card.appendChild(el("div", { class: "scroll-x" })).appendChild(alignment(u, set.has_winner));
    return card;
  }

  function substitutionTables(set) {
    const box = el("div", { class: "subs" });
    box.appendChild(el("h3", {}, `${set.label}: WER ${fmt(set.wer.base, "wer")}` +
      (set.has_winner ? ` → ${fmt(set.wer.winner, "wer")}` : "") + " %, most frequent substitutions"));
    const pair = box.appendChild(el("div", { class: "pair" }));
    [["base", "before: base model"], ["winner", "after: winner"]].forEach(([model, title]) => {
      if (model === "winner" && !set.has_winner) return;
      const table = pair.appendChild(el("table", { class: "subs-" + model }));
      table.appendChild(el("caption", {}, title));
      const head = el("tr");
      ["ref → hyp", "base", "winner"].forEach((h, i) => head.appendChild(el("th", i ? {} : { class: "text" }, h)));
      table.appendChild(el("thead")).appendChild(head);
      const body = table.appendChild(el("tbody"));
      set.substitutions[model].forEach(([ref, hyp, b, w]) => {
        const tr = body.appendChild(el("tr"));
        tr.appendChild(el("td", { class: "text" }, `${ref} → ${hyp}`));
        tr.appendChild(el("td", {}, b));
        tr.appendChild(el("td", {}, set.has_winner ? w : "–"));
      });
      if (!set.substitutions[model].length) body.appendChild(el("tr")).appendChild(el("td", { colspan: 3, class: "text" }, "none"));
    });
    return box;
  }

  let lastFixedBroken = null;

  function renderFixedBroken(fb) {
    lastFixedBroken = fb;
    const box = document.getElementById("fixed-broken");
    if (!fb || fb.message) {
      box.replaceChildren(el("p", { class: "chart-message" }, fb ? fb.message : "no data"));
      box.dataset.state = "message";
      return;
    }
    box.dataset.state = "view";
    const values = (key) => [...new Set(fb.sets.map((s) => s[key]).filter((v) => v !== null))];
    const controls = el("div", { class: "fb-controls" });
    controls.append(filterSelect("domain", "domain", values("domain")), filterSelect("split", "split", values("split")),
      filterSelect("outcome", "show", ["changed", "fixed", "broken", "unchanged", "looping"]));
    const sets = fb.sets.filter((s) => (fbFilter.domain === "all" || s.domain === fbFilter.domain) &&
      (fbFilter.split === "all" || s.split === fbFilter.split));
    let utterances = sets.flatMap((s) => s.utterances.map((u) => [u, s]))
      .filter(([u]) => fbFilter.outcome === "all" || u.outcome === fbFilter.outcome ||
        (fbFilter.outcome === "changed" && (u.outcome === "fixed" || u.outcome === "broken")) ||
        (fbFilter.outcome === "looping" && (u.winner_looping || u.base_looping)));
    // Sorted by the change in word errors: the most fixed first, or, when showing the broken ones, the most broken.
    utterances.sort(([a], [b]) => (a.delta || 0) - (b.delta || 0) || b.base_errors - a.base_errors || (a.id < b.id ? -1 : 1));
    if (fbFilter.outcome === "broken") utterances.reverse();
    const shown = utterances.slice(0, fbShown);
    const count = el("span", { id: "fb-count" }, `showing ${shown.length} of ${utterances.length} utterances` +
      (embedded ? ` (this report keeps ${fb.shown})` : ""));
    controls.appendChild(count);
    const legend = el("p", { class: "hint legend" });
    legend.append("Marks: ", el("span", { class: "op-sub" }, "substituted"), ", ", el("span", { class: "op-del" }, "— deleted"),
      ", ", el("span", { class: "op-ins" }, "+inserted"), "; a word the winner ", el("span", { class: "fixed" }, "fixed"),
      " (the base model got it wrong) or ", el("span", { class: "broken" }, "broke"), " (the base model got it right).");
    const list = el("div", { id: "fb-utterances" });
    list.replaceChildren(...shown.map(([u, s]) => utteranceCard(u, s)));
    const parts = [el("p", { id: "fb-headline", class: "headline" }, fb.headline), controls, legend, list];
    if (utterances.length > shown.length) {
      const more = el("button", { id: "fb-more", type: "button" }, `show ${Math.min(UTTERANCES_PER_PAGE, utterances.length - shown.length)} more`);
      more.addEventListener("click", () => {
        fbShown += UTTERANCES_PER_PAGE;
        renderFixedBroken(lastFixedBroken);
      });
      parts.push(more);
    }
    parts.push(el("div", { id: "fb-substitutions", class: "subs-grid" }));
    parts[parts.length - 1].replaceChildren(...sets.map(substitutionTables));
    box.replaceChildren(...parts);
  }

  function renderExports() {
    const box = document.getElementById("trial-exports");
    if (embedded) return;
    box.replaceChildren("Download the table (these columns): ",
      el("a", { href: "export/trials.csv", download: "trials.csv" }, "CSV"), " · ",
      el("a", { href: "export/trials.parquet", download: "trials.parquet" }, "Parquet"));
  }

  function renderFiles(view) {
    const footer = document.getElementById("files");
    const items = [el("span", {}, `results folder: ${view.results_dir}` + (embedded ? ` — report generated ${view.generated_at}` : "") + ". ")];
    if (!embedded) {
      view.files.forEach((name) => items.push(el("a", { href: "files/" + encodeURIComponent(name) }, name)));
    }
    footer.replaceChildren(...items);
  }

  function render(view) {
    document.getElementById("title").textContent =
      (embedded ? "Report: " : "Dashboard: ") + (view.search_id ? `search ${view.search_id}` : view.results_dir);
    setState(view.state, embedded ? "" : "updated " + new Date().toLocaleTimeString());
    renderMessages(view.errors, view.notes);
    renderSummary(view.summary);
    renderFixedBroken(view.fixed_broken);
    renderTrials(view.trials);
    renderExports();
    renderFiles(view);
    // The charts of a big search take seconds to draw: let the browser show the table and the summary first.
    const painted = new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
    return painted.then(() => Promise.all(Object.entries(view.charts).map(([key, fig]) => renderChart(key, fig)))).then(() => {
      // Tests (and curious users) can see that a drawing finished, and how many there were.
      document.body.dataset.rendered = String(++renderCount);
    });
  }

  function poll() {
    // With the fingerprint drawn, an unchanged view comes back as that fingerprint and the state only.
    const known = lastFingerprint === null ? "" : "?known=" + encodeURIComponent(lastFingerprint);
    fetch("api/view" + known, { cache: "no-store" })
      .then((r) => r.json())
      .then((view) => {
        if (view.error) throw new Error(view.error);
        return view;
      })
      .then((view) => {
        // Drawing errors are not caught here: they are bugs and must show in the browser console.
        if (view.fingerprint === lastFingerprint) {
          setState(view.state, "updated " + new Date().toLocaleTimeString());
          return null;
        }
        lastFingerprint = view.fingerprint;
        return render(view);
      }, (e) => setState("offline", "cannot read the results from the dashboard server: " + e.message))
      .finally(() => setTimeout(poll, POLL_MS));
  }

  if (embedded) {
    render(JSON.parse(embedded.textContent));
  } else {
    poll();
  }
})();
