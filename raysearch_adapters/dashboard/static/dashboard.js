// raysearch-adapters dashboard: draws one view (JSON from /api/view, or embedded in a report).
// Live: polls every few seconds and redraws only when the results folder changed.
// All text from the results files goes in through textContent, never as HTML.
(function () {
  "use strict";

  const script = document.currentScript;
  const POLL_MS = 1000 * Number((script && script.dataset.pollSeconds) || 3);
  const embedded = document.getElementById("rsa-view");
  const PLOT_CONFIG = { responsive: true, displaylogo: false };
  const TEXT_COLUMNS = new Set(["trial_id", "status", "blocks", "position", "device", "error"]);
  const FIXED_2 = new Set(["wer", "dev_wer_new", "dev_wer_original", "adapter_percent", "dropout", "stochastic_depth"]);
  let lastFingerprint = null;
  let renderCount = 0;
  let sortKey = null;
  let sortAsc = true;

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
    if (key === "degradation") return (value > 0 ? "+" : "") + value.toFixed(2);
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

  function renderSummary(s) {
    const box = document.getElementById("summary");
    const parts = [];
    const units = s.units || "WER points";
    const kappa = s.degradation_limit === null ? "κ not known yet"
      : `feasible = original-domain dev degradation ≤ κ = ${s.degradation_limit} ${units}` +
        (s.kappa_mode ? ` (kappa ${s.kappa}, ${s.kappa_mode})` : "");
    const c = s.counts;
    parts.push(el("p", {}, `${c.total} trials: ${c.COMPLETE} complete, ${c.PRUNED} pruned by ASHA, ` +
      `${c.FAIL} failed, ${c.RUNNING} running. ${kappa}.`));
    if (s.rows.length) {
      const table = el("table", { id: "summary-table" });
      const head = el("tr");
      ["WER %", "dev new", "dev original", "test new", "test original"].forEach((h, i) =>
        head.appendChild(el("th", i === 0 ? { class: "text" } : {}, h)));
      table.appendChild(el("thead")).appendChild(head);
      const body = table.appendChild(el("tbody"));
      s.rows.forEach((r) => {
        const tr = body.appendChild(el("tr"));
        tr.appendChild(el("td", { class: "text" }, r.label));
        ["dev_new", "dev_original", "test_new", "test_original"].forEach((k) => tr.appendChild(el("td", {}, fmt(r[k], "wer"))));
      });
      parts.push(table);
    }
    if (s.winner) {
      const w = s.winner;
      const hp = Object.entries(w.hparams || {}).map(([k, v]) => `${k}=${fmt(v, k)}`).join(", ");
      parts.push(el("p", { class: "winner-params" },
        `trial ${w.trial_id}: ${hp}; adapter ${fmt(w.adapter_params)} params (${fmt(w.adapter_percent, "adapter_percent")} % of the ` +
        `base model); degradation ${fmt(w.degradation, "degradation")}`));
    }
    if (s.note) parts.push(el("p", { class: "chart-note" }, s.note));
    if (s.versions) {
      parts.push(el("p", { class: "chart-note" }, "versions: " +
        Object.entries(s.versions).map(([k, v]) => `${k} ${v}`).join(", ")));
    }
    box.replaceChildren(...parts);
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
    const rows = t.rows.slice();
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
    renderTrials(view.trials);
    renderFiles(view);
    const drawn = Object.entries(view.charts).map(([key, fig]) => renderChart(key, fig));
    return Promise.all(drawn).then(() => {
      // Tests (and curious users) can see that a drawing finished, and how many there were.
      document.body.dataset.rendered = String(++renderCount);
    });
  }

  function poll() {
    fetch("api/view", { cache: "no-store" })
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
