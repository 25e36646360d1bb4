"use strict";
(() => {
  const $ = (sel) => document.querySelector(sel);
  const make = (tag, props = {}, ...kids) => {
    const el = Object.assign(document.createElement(tag), props);
    el.append(...kids);
    return el;
  };
  const fmt = (x, digits = 2) => (x === null || !isFinite(x) ? "–" : (+x.toFixed(digits)).toString());
  // from the origin: a page opened with user:key@ in its URL would resolve relative URLs with the
  // credentials in them, which fetch refuses; the browser sends the key it has for the origin
  const api = (path) => new URL(path, location.origin);
  const models = JSON.parse($("#models-data").textContent);
  const byName = new Map(models.map((m) => [m.name, m]));

  // ---------------------------------------------------------------- try it
  const form = $("#try");
  const result = $("#try-result");
  if (models.some((m) => m.answers)) form.hidden = false;

  function bars(prediction, model) {
    const chosen = new Set(prediction.labels ?? (prediction.label === null ? [] : [prediction.label]));
    const threshold = prediction.labels ? model.threshold ?? 0.5 : null;
    const list = make("ul", { className: "bars" });
    for (const [label, score] of Object.entries(prediction.scores)) {
      const on = chosen.has(label);
      const fill = make("div", { className: "fill" });
      fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
      const track = make("div", { className: "track" }, fill);
      track.setAttribute("aria-hidden", "true");
      if (threshold !== null) {
        const mark = make("div", { className: "mark", title: `threshold ${threshold}` });
        mark.style.left = `${threshold * 100}%`;
        track.append(mark);
      }
      const note = on ? (threshold !== null ? " (over the threshold)" : " (top)") : "";
      list.append(
        make("li", { className: on ? "on" : "" },
          make("span", { className: "name" }, label, make("span", { className: "sr-only" }, note)),
          track,
          make("span", {}, fmt(score, 3)))
      );
    }
    const head = prediction.labels
      ? `Labels over the threshold ${threshold}: ${prediction.labels.join(", ") || "none"}`
      : `Top label: ${prediction.label} (${fmt(prediction.score, 3)})`;
    return [make("p", {}, head), list];
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("#try-model").value;
    const model = byName.get(name);
    const text = $("#try-text").value;
    result.replaceChildren(make("p", { className: "muted" }, "Predicting…"));
    try {
      const answer = await fetch(api(`/v1/models/${encodeURIComponent(name)}/predict`), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ texts: [text] }),
      });
      const body = await answer.json();
      if (!answer.ok) throw new Error(`${answer.status}: ${body.error}`);
      const prediction = body.predictions[0];
      const shown = Object.keys(prediction.scores).length
        ? bars(prediction, model)
        : [make("p", {}, "Value: ", make("span", { className: "value" }, fmt(prediction.score, 4)))];
      result.replaceChildren(make("p", { className: "muted" }, `${body.model} version ${body.version}`), ...shown);
    } catch (err) {
      result.replaceChildren(make("p", { className: "error" }, `Failed: ${err.message}`));
    }
  });

  // ------------------------------------------------------------------ chat
  const chatSection = $("#chat-section");
  const chatForm = $("#chat");
  const chatLog = $("#chat-log");
  const stop = $("#chat-stop");
  const send = $("#chat-send");
  const history = [];
  let controller = null;
  if (models.some((m) => m.generates)) chatSection.hidden = false;

  function say(role, text) {
    const body = make("span", { className: "text" }, text);
    chatLog.append(make("div", { className: `msg ${role}` }, make("span", { className: "who" }, role), body));
    return body;
  }

  async function* events(answer) {
    // server-sent events: "data: {...}" lines, a blank line between events, "data: [DONE]" last
    const reader = answer.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    }
  }

  stop.addEventListener("click", () => controller?.abort());
  chatForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("#chat-text").value;
    if (!text || controller) return;
    history.push({ role: "user", content: text });
    say("user", text);
    $("#chat-text").value = "";
    const out = say("assistant", "");
    controller = new AbortController();
    stop.disabled = false;
    send.disabled = true;
    let reply = "";
    try {
      const answer = await fetch(api("/v1/chat/completions"), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        signal: controller.signal,
        body: JSON.stringify({
          model: $("#chat-model").value,
          messages: history,
          stream: true,
          temperature: +$("#chat-temperature").value,
          top_p: +$("#chat-top-p").value,
          max_tokens: +$("#chat-max-tokens").value,
        }),
      });
      if (!answer.ok) throw new Error(`${answer.status}: ${(await answer.json()).error?.message}`);
      for await (const chunk of events(answer)) {
        const piece = chunk.choices?.[0]?.delta?.content ?? "";
        reply += piece;
        out.textContent = reply;
      }
      out.parentElement.dataset.done = "finished";
    } catch (err) {
      const stopped = err.name === "AbortError";
      out.parentElement.dataset.done = stopped ? "stopped" : "failed";
      out.parentElement.append(make("span", { className: stopped ? "who" : "error" }, stopped ? " (stopped)" : ` Failed: ${err.message}`));
    } finally {
      if (reply) history.push({ role: "assistant", content: reply });
      controller = null;
      stop.disabled = true;
      send.disabled = false;
    }
  });

  // ------------------------------------------------------------------ live
  const WINDOW = 60; // points kept: one a second
  const live = $("#live");
  const series = new Map(); // model -> {figures, points: {rps, p50, p99, queue, batch}}
  const snapshots = []; // the last WINDOW snapshots
  const PLOTS = [
    ["rps", "requests/s", (v) => fmt(v, 1)],
    ["latency", "latency p50 / p99 ms", (v) => `${fmt(v[0], 1)} / ${fmt(v[1], 1)}`],
    ["queue", "queue depth", (v) => fmt(v, 0)],
    ["batch", "mean batch size", (v) => fmt(v, 1)],
  ];

  function quantile(q, now, before) {
    if (!now) return null;
    const counts = now.counts.map((c, i) => c - (before ? before.counts[i] : 0));
    const total = counts[counts.length - 1];
    if (!(total > 0)) return null;
    const rank = q * total;
    for (let i = 0; i < counts.length; i++) {
      if (counts[i] >= rank) {
        if (i >= now.le.length) return now.le[now.le.length - 1];
        const below = i ? counts[i - 1] : 0;
        const lower = i ? now.le[i - 1] : 0;
        const inside = counts[i] - below;
        return lower + (now.le[i] - lower) * (inside ? (rank - below) / inside : 0);
      }
    }
    return null;
  }

  function svg(cls) {
    const ns = "http://www.w3.org/2000/svg";
    const root = document.createElementNS(ns, "svg");
    root.setAttribute("viewBox", `0 0 ${WINDOW - 1} 100`);
    root.setAttribute("preserveAspectRatio", "none");
    root.setAttribute("aria-hidden", "true");
    const lines = cls.map((c) => {
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("class", c);
      root.append(line);
      return line;
    });
    return [root, lines];
  }

  function block(name) {
    let entry = series.get(name);
    if (entry) return entry;
    const figures = {};
    const plots = make("div", { className: "plots" });
    for (const [key, label] of PLOTS) {
      const [root, lines] = svg(key === "latency" ? ["p50", "p99"] : [key]);
      const value = make("b");
      plots.append(make("figure", { className: `plot-${key}` }, root, make("figcaption", {}, `${label} `, value)));
      figures[key] = { lines, value };
    }
    const errors = make("p", { className: "errors" }, "errors: none");
    const section = make("section", { className: "model", id: `live-${name}` },
      make("h3", {}, name), plots, errors);
    section.setAttribute("aria-label", `live figures of ${name}`);
    live.append(section);
    entry = { figures, errors, points: { rps: [], latency: [], queue: [], batch: [] } };
    series.set(name, entry);
    return entry;
  }

  function draw(line, values) {
    const max = Math.max(1e-9, ...values.flat().filter((v) => v !== null));
    const offset = WINDOW - values.length;
    return (pick) => line.setAttribute("points", values
      .map((v, i) => [i + offset, pick(v)])
      .filter(([, v]) => v !== null)
      .map(([x, v]) => `${x},${fmt(100 - (v / max) * 96, 2)}`).join(" "));
  }

  function update(now, prev, oldest) {
    const dt = prev ? now.time - prev.time : 0;
    for (const [name, m] of Object.entries(now.models)) {
      if (name === "") continue;
      const p = prev?.models[name];
      const entry = block(name);
      const total = (r) => Object.values(r ?? {}).reduce((a, b) => a + b, 0);
      const rps = dt > 0 ? (total(m.requests) - total(p?.requests)) / dt : null;
      const ms = (q) => { const v = quantile(q, m.latency, p?.latency); return v === null ? null : v * 1000; };
      const batchN = m.batch ? m.batch.counts[m.batch.counts.length - 1] - (p?.batch ? p.batch.counts[p.batch.counts.length - 1] : 0) : 0;
      const batch = batchN > 0 ? (m.batch.sum - (p?.batch?.sum ?? 0)) / batchN : null;
      const values = { rps, latency: [ms(0.5), ms(0.99)], queue: m.queue, batch };
      for (const [key, , show] of PLOTS) {
        const points = entry.points[key];
        points.push(values[key]);
        if (points.length > WINDOW) points.shift();
        const fig = entry.figures[key];
        fig.value.textContent = show(values[key]);
        fig.lines.forEach((line, i) => draw(line, points)((v) => (Array.isArray(v) ? v[i] : v)));
      }
      const before = oldest?.models[name]?.requests ?? {};
      const errors = Object.entries(m.requests)
        .filter(([status]) => !status.startsWith("2"))
        .map(([status, n]) => [status, n - (before[status] ?? 0)])
        .filter(([, n]) => n > 0);
      entry.errors.textContent = errors.length
        ? `not 2xx in the last minute: ${errors.map(([s, n]) => `${s} × ${n}`).join(", ")}`
        : "not 2xx in the last minute: none";
    }
  }

  async function poll() {
    try {
      const answer = await fetch(api("/v1/stats"), { cache: "no-store" });
      if (!answer.ok) throw new Error(`status ${answer.status}`);
      const now = await answer.json();
      update(now, snapshots[snapshots.length - 1], snapshots[0]);
      snapshots.push(now);
      if (snapshots.length > WINDOW) snapshots.shift();
    } catch (err) {
      $("#live-note").textContent = `Live figures unavailable: ${err.message}`;
    }
    setTimeout(poll, 1000);
  }
  for (const m of models) block(m.name);
  poll();
})();
