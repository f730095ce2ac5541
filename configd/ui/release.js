// riskfeat-configd web console, part two: gray release and the rollout view.
// Loaded after app.js (both deferred, in order) and uses its helpers: el(),
// api(), nsPath(), nsHeader(), errorBox(), toOps(). As there, every client
// id, label, reason and value reaches the page as a text node: an agent
// chooses its own id and its worker's rejection reason, so they are data
// from outside. docs/console.md.
"use strict";

// "canary=true, zone=a" -> {labels} or {error}.
function parseLabels(text) {
  const labels = {};
  for (const pair of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const i = pair.indexOf("=");
    if (i <= 0) return { error: `label ${JSON.stringify(pair)}: expected key=value` };
    labels[pair.slice(0, i).trim()] = pair.slice(i + 1).trim();
  }
  return { labels };
}

// A selector as text: "canary=true, zone=a; 10% of client ids".
function selectorText(sel) {
  const labels = Object.entries(sel.labels || {}).map(([k, v]) => k + "=" + v);
  const parts = [];
  if (labels.length) parts.push(labels.join(", "));
  if (sel.percent !== undefined && sel.percent !== null) parts.push(`${sel.percent}% of client ids`);
  return parts.join("; ") || "every client";
}

// ---------- start: from the edit's preview ----------

// The form under a preview that starts a gray release of its change set
// (admins only: only they reach the editor).
function grayStartForm(changes, comment, author) {
  const labels = el("input", { id: "gray-labels", placeholder: "labels, e.g. canary=true", spellcheck: "false" });
  const percent = el("input", { id: "gray-percent", type: "number", min: 1, max: 100, placeholder: "% of ids" });
  const start = el("button", { id: "start-gray", type: "button", class: "secondary" },
    `Start a gray release as version ${state.version + 1}`);
  const result = el("div", { id: "gray-start-result" });
  start.addEventListener("click", async () => {
    const parsed = parseLabels(labels.value);
    if (parsed.error) {
      result.replaceChildren(el("p", { class: "error", id: "gray-error" }, parsed.error));
      return;
    }
    const selector = { labels: parsed.labels };
    if (percent.value !== "") selector.percent = Number(percent.value);
    const body = { selector, changes: toOps(changes), expected_version: state.version, comment: comment.value };
    if (author.value) body.author = author.value;
    start.disabled = true;
    const ns = state.ns;
    try {
      const r = await api("POST", nsPath(ns, "/gray"), body);
      state.draft = null;
      // No hashchange (it would clear the banner): show the gray page now.
      history.pushState(null, "", "#/ns/" + encodeURIComponent(ns) + "/gray");
      await viewGray(ns);
      banner("ok", `Started a gray release as version ${r.version} of ${ns} for ${selectorText(selector)}.`);
    } catch (e) {
      start.disabled = false;
      if (e.code === "version_conflict") showConflict(result);
      else {
        const box = errorBox("gray-error", e, "no gray release was started");
        if (e.code === "gray_in_progress") {
          box.appendChild(el("p", {}, el("a", { href: "#/ns/" + encodeURIComponent(ns) + "/gray" },
            "Promote or abort the one in progress first")));
        }
        result.replaceChildren(box);
      }
    }
  });
  return el("div", { id: "gray-start" },
    el("h3", {}, "Or start a gray release of these changes"),
    el("p", { class: "note" }, "Only the clients the selector picks get them (every label must match; with a "
      + "percentage, that share of client ids by a stable hash); the others stay on the current items "
      + "until you promote or abort it on the Gray release tab."),
    el("div", { class: "tools" }, labels, percent, start), result);
}

// ---------- the gray release in progress ----------

async function viewGray(ns) {
  const [g, r] = await Promise.all([api("GET", nsPath(ns, "/gray")), api("GET", nsPath(ns, "/rollout"))]);
  state.ns = ns;
  state.version = g.version;
  const head = nsHeader(ns, g.version, "gray");
  if (!g.gray) {
    const how = isAdmin() ? " To start one: Items, Edit, Preview changes, then start a gray release of the change set." : "";
    setView(head, el("p", { id: "no-gray", class: "empty" }, `No gray release in progress in ${ns}.${how}`));
    return;
  }
  const gray = g.gray;
  const live = r.clients.filter((c) => c.status !== "gone");
  const selected = live.filter((c) => c.gray);
  const applied = selected.filter((c) => c.version >= gray.version);
  const fact = (label, id, ...value) => el("tr", {}, el("th", {}, label), el("td", { id }, ...value));
  const summary = el("table", { id: "gray-summary", class: "facts" }, el("tbody", {},
    fact("Started by", "gray-version", "v" + gray.version),
    fact("Selector", "gray-selector", selectorText(gray.selector)),
    fact("Clients selected", "gray-selected", `${selected.length} of ${live.length} reporting`),
    fact("Applied it", "gray-applied", `${applied.length} of ${selected.length} selected`)));
  const changes = el("table", { id: "gray-changes" },
    el("thead", {}, el("tr", {}, el("th", {}, "Op"), el("th", {}, "Key"), el("th", {}, "Value"))),
    el("tbody", {}, gray.changes.map((c) => el("tr", {}, el("td", { class: "kind" }, c.op),
      el("td", { class: "key" }, c.key), el("td", { class: "value" }, el("pre", {}, pretty(c.value)))))));
  const parts = [head, el("h3", {}, "Gray release in progress"), summary,
    el("h3", {}, "Its changes over the main items"), changes];
  if (isAdmin()) parts.push(grayEndControls(ns, g.version, gray));
  setView(...parts);
}

// Promote and abort (admins only).
function grayEndControls(ns, version, gray) {
  const comment = el("input", { id: "gray-comment", placeholder: "comment (why)", maxlength: 4096 });
  const result = el("div", { id: "gray-result" });
  const end = (action, label) => {
    const btn = el("button", { id: action, type: "button", class: action === "abort" ? "secondary" : "" }, label);
    btn.addEventListener("click", async () => {
      btn.disabled = true;
      const body = { expected_version: version };
      if (comment.value) body.comment = comment.value;
      try {
        const r = await api("POST", nsPath(ns, "/gray/" + action), body);
        await viewGray(ns);
        banner("ok", action === "promote"
          ? `Promoted the gray release of version ${gray.version}: published to every client as version ${r.version}.`
          : `Aborted the gray release of version ${gray.version} as version ${r.version}: its clients are back on the main items.`);
      } catch (e) {
        btn.disabled = false;
        const what = action === "promote" ? "nothing was promoted" : "nothing was aborted";
        result.replaceChildren(e.code === "version_conflict"
          ? el("div", { id: "gray-error", class: "error" }, el("strong", {}, `Conflict: ${what}. `),
            `Someone published to ${ns} after version ${version}. Reload to see the current version, then try again.`,
            el("br"), el("button", { id: "gray-reload", type: "button",
              on: { click: () => viewGray(ns).catch((err) => banner("error", err.message)) } }, "Reload"))
          : errorBox("gray-error", e, what));
      }
    });
    return btn;
  };
  return el("div", {},
    el("div", { class: "tools" }, comment,
      end("promote", `Promote to every client as version ${version + 1}`),
      end("abort", `Abort (version ${version + 1}, the main items for all)`)),
    result);
}

// ---------- rollout: who runs what ----------

async function viewRollout(ns) {
  const r = await api("GET", nsPath(ns, "/rollout"));
  state.ns = ns;
  state.version = r.version;
  const onGray = (c) => Boolean(r.gray && c.gray && c.version >= r.gray.version);
  const versions = el("table", { id: "rollout-versions" },
    el("thead", {}, el("tr", {}, el("th", {}, "Version"), el("th", { class: "num" }, "Clients"),
      el("th", { class: "num", title: "of which the gray release in progress selects" }, "Selected by the gray release"))),
    el("tbody", {}, r.versions.map((v) => el("tr", { "data-version": v.version },
      el("td", {}, "v" + v.version), el("td", { class: "num" }, v.clients), el("td", { class: "num" }, v.gray)))));
  const clients = el("table", { id: "rollout-clients" },
    el("thead", {}, el("tr", {}, ["Client", "Labels", "Applied", "Items", "In force", "Status", "Rejected", "Last seen"]
      .map((t) => el("th", {}, t)))),
    el("tbody", {}, r.clients.map((c) => el("tr", { "data-client": c.client_id, class: "status-" + c.status },
      el("td", { class: "client" }, c.client_id),
      el("td", { class: "labels" }, Object.entries(c.labels).flatMap(([k, v], i) => [i ? " " : null,
        el("span", { class: "label" }, k + "=" + v)])),
      el("td", { class: "applied" }, "v" + c.version),
      el("td", { class: "view" }, onGray(c) ? "gray" : "main"),
      el("td", { class: "in-force" }, c.in_force === null ? "\u2014" : "v" + c.in_force),
      el("td", { class: "status" }, c.status),
      el("td", { class: "rejected" }, c.rejected ? `v${c.rejected.version}: ${c.rejected.reason}` : ""),
      el("td", { class: "seen" }, c.last_seen)))));
  const gray = r.gray ? `; a gray release (from v${r.gray.version}) for ${selectorText(r.gray.selector)}` : "";
  // Disabled until the new view replaces it: one refresh at a time.
  const refresh = el("button", { id: "refresh-rollout", type: "button", class: "secondary",
    on: { click: () => {
      refresh.disabled = true;
      viewRollout(ns).catch((e) => {
        refresh.disabled = false;
        banner("error", e.message);
      });
    } } }, "Refresh");
  setView(nsHeader(ns, r.version, "rollout"),
    el("div", { class: "tools" },
      el("p", { id: "rollout-summary" }, `Current version v${r.version}${gray}; ${r.stale} stale client${r.stale === 1 ? "" : "s"}; `
        + `${r.clients.filter((c) => c.status === "rejected").length} rejected.`),
      refresh),
    el("h3", {}, "Clients per version applied"), versions,
    el("h3", {}, "Clients"),
    r.clients.length ? clients : el("p", { class: "empty" }, "No client has reported on this namespace."));
}
