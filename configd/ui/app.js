// riskfeat-configd web console: plain JavaScript, no build step, no library.
//
// Every key, value, author and comment reaches the page as a text node
// (el() below): nothing from the server is ever parsed as HTML. The token is
// kept in sessionStorage (this tab only) and sent as a Bearer header; the
// server checks every request anyway, the console only hides what a read
// token cannot do. docs/console.md.
"use strict";

const TOKEN_KEY = "riskfeat-configd-token";
const ROWS_SHOWN = 1000;

const state = {
  token: null,
  me: null, // {name, role}
  // The namespace being viewed: its items as loaded, and their version.
  ns: null,
  items: null,
  version: null,
  // The edit in progress: the editor's text survives a reload after a conflict.
  draft: null,
};

// ---------- DOM helpers: text only ----------

// el("td", {class: "key"}, "text", childNode, ...): strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "on") {
      for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    } else if (k === "disabled" || k === "checked" || k === "selected") {
      node[k] = Boolean(v);
    } else if (k === "value") {
      node.value = v;
    } else {
      node.setAttribute(k, String(v));
    }
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return node;
}

const $ = (sel) => document.querySelector(sel);

function show(node, on) {
  node.hidden = !on;
}

// A JSON value as text; undefined (absent) as an em dash.
function jsonText(v) {
  return v === undefined ? "\u2014" : JSON.stringify(v);
}

function pretty(v) {
  return v === undefined ? "\u2014" : JSON.stringify(v, null, 2);
}

// JSON with sorted object keys: two equal values give equal text.
function canonical(v) {
  if (Array.isArray(v)) return "[" + v.map(canonical).join(",") + "]";
  if (v !== null && typeof v === "object") {
    return "{" + Object.keys(v).sort().map((k) => JSON.stringify(k) + ":" + canonical(v[k])).join(",") + "}";
  }
  return JSON.stringify(v);
}

function banner(kind, text) {
  const b = $("#banner");
  b.className = kind;
  b.replaceChildren(el("span", {}, text));
  show(b, true);
}

function clearBanner() {
  show($("#banner"), false);
}

function isAdmin() {
  return state.me && state.me.role === "admin";
}

// ---------- API ----------

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || "";
    this.field = e.field || "";
    // schema_violation: every broken rule, [{key, rule, message}].
    this.violations = Array.isArray(e.violations) ? e.violations : [];
  }
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + state.token } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    throw new ApiError(0, { error: { message: "configd did not answer: " + e.message } });
  }
  const text = await resp.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  if (!resp.ok) {
    const err = new ApiError(resp.status, json);
    if (resp.status === 401) {
      signOut("Signed out: " + err.message);
    }
    throw err;
  }
  return json;
}

const nsPath = (ns, rest) => "/v1/admin/namespaces/" + encodeURIComponent(ns) + (rest || "");

// ---------- sign in ----------

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.me = null;
  show($("#who"), false);
  show($("#view"), false);
  clearBanner();
  show($("#signin"), true);
  const err = $("#signin-error");
  err.textContent = message || "";
  show(err, Boolean(message));
  $("#token").value = "";
  $("#token").focus();
}

async function signIn(token) {
  state.token = token;
  const me = await api("GET", "/v1/admin/namespaces");
  state.me = me.token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#who-name").textContent = me.token.name;
  $("#who-role").textContent = me.token.role === "admin" ? "admin" : "read-only";
  $("#who-role").className = "badge " + (me.token.role === "admin" ? "admin" : "read");
  document.body.classList.toggle("read-only", me.token.role !== "admin");
  show($("#signin"), false);
  show($("#who"), true);
  show($("#view"), true);
  return me;
}

// ---------- routing: #/, #/ns/NAME, #/ns/NAME/{history,gray,rollout} ----------

async function route() {
  if (!state.token) return;
  clearBanner();
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] === "ns" && parts[1]) {
      if (parts[2] === "history") await viewHistory(parts[1]);
      else if (parts[2] === "gray") await viewGray(parts[1]);
      else if (parts[2] === "rollout") await viewRollout(parts[1]);
      else await viewItems(parts[1]);
    } else {
      await viewNamespaces();
    }
  } catch (e) {
    banner("error", e.message);
  }
}

function setView(...children) {
  $("#view").replaceChildren(...children);
}

// ---------- namespaces ----------

async function viewNamespaces() {
  const me = await api("GET", "/v1/admin/namespaces");
  const rows = me.namespaces.map((n) =>
    el("tr", { "data-ns": n.namespace },
      el("td", {}, el("a", { href: "#/ns/" + encodeURIComponent(n.namespace), class: "ns-link" }, n.namespace)),
      el("td", { class: "num version" }, n.version),
      el("td", { class: "gray" }, n.gray === null || n.gray === undefined ? "\u2014"
        : el("a", { href: "#/ns/" + encodeURIComponent(n.namespace) + "/gray" }, "from v" + n.gray)),
      el("td", { class: "num clients" }, n.clients),
      el("td", { class: "num stale" }, n.stale),
      el("td", { class: "num" }, n.compacted_to)));
  const table = el("table", { id: "namespaces" },
    el("thead", {}, el("tr", {}, el("th", {}, "Namespace"), el("th", {}, "Version"),
      el("th", { title: "the gray release in progress, by the version that started it" }, "Gray release"),
      el("th", { title: "clients that reported lately (every configd instance)" }, "Clients"),
      el("th", { title: "clients behind the current version or no longer reporting" }, "Stale"),
      el("th", { title: "versions up to this one are compacted" }, "Compacted to"))),
    el("tbody", {}, rows));
  const parts = [el("h2", {}, "Namespaces"),
    rows.length ? table : el("p", { class: "empty" }, "No namespace this token may see.")];
  if (isAdmin()) parts.push(createForm());
  setView(...parts);
}

function createForm() {
  const input = el("input", { id: "new-ns", placeholder: "new namespace", required: "" });
  return el("form", {
    id: "create-form", class: "inline",
    on: { submit: async (ev) => {
      ev.preventDefault();
      try {
        await api("PUT", nsPath(input.value));
        location.hash = "#/ns/" + encodeURIComponent(input.value);
      } catch (e) {
        banner("error", e.message);
      }
    } },
  }, input, el("button", { id: "create-ns", type: "submit" }, "Create namespace"));
}

// ---------- one namespace: header and tabs ----------

function nsHeader(ns, version, tab) {
  const tabLink = (name, label, href) =>
    el("a", { href, class: "tab" + (tab === name ? " current" : ""), id: "tab-" + name }, label);
  return el("div", { class: "ns-head" },
    el("h2", {}, el("a", { href: "#/" }, "Namespaces"), " / ", el("span", { id: "ns-name" }, ns),
      " ", el("span", { class: "badge", id: "ns-version" }, "v" + version)),
    el("nav", { class: "tabs" },
      tabLink("items", "Items", "#/ns/" + encodeURIComponent(ns)),
      tabLink("history", "History", "#/ns/" + encodeURIComponent(ns) + "/history"),
      tabLink("gray", "Gray release", "#/ns/" + encodeURIComponent(ns) + "/gray"),
      tabLink("rollout", "Rollout", "#/ns/" + encodeURIComponent(ns) + "/rollout")));
}

async function loadItems(ns) {
  const snap = await api("GET", nsPath(ns, "/items"));
  state.ns = ns;
  state.items = snap.items || {};
  state.version = snap.to;
  return snap;
}

// ---------- items ----------

async function viewItems(ns) {
  if (state.draft && state.draft.ns !== ns) state.draft = null;
  await loadItems(ns);
  if (state.draft) return viewEditor();
  const keys = Object.keys(state.items).sort();
  const filter = el("input", { id: "filter", type: "search", placeholder: "filter keys" });
  const body = el("tbody");
  const note = el("p", { class: "note" });
  const render = () => {
    const f = filter.value;
    const shown = keys.filter((k) => k.includes(f));
    body.replaceChildren(...shown.slice(0, ROWS_SHOWN).map((k) =>
      el("tr", {}, el("td", { class: "key" }, k), el("td", { class: "value" }, el("code", {}, jsonText(state.items[k]))))));
    note.textContent = shown.length > ROWS_SHOWN
      ? `showing ${ROWS_SHOWN} of ${shown.length} keys; filter to narrow` : `${shown.length} of ${keys.length} keys`;
  };
  filter.addEventListener("input", render);
  render();
  const tools = el("div", { class: "tools" }, filter);
  if (isAdmin()) {
    tools.appendChild(el("button", { id: "edit", type: "button", on: { click: () => startEdit() } }, "Edit"));
  }
  setView(nsHeader(ns, state.version, "items"), tools,
    el("table", { id: "items" }, el("thead", {}, el("tr", {}, el("th", {}, "Key"), el("th", {}, "Value"))), body),
    note);
}

// ---------- edit, preview, publish ----------

function startEdit() {
  const sorted = {};
  for (const k of Object.keys(state.items).sort()) sorted[k] = state.items[k];
  state.draft = { ns: state.ns, text: JSON.stringify(sorted, null, 2), base: state.version };
  viewEditor();
}

function keyProblem(k) {
  if (k.length === 0) return "a key is empty";
  if (new TextEncoder().encode(k).length > 256) return `key ${JSON.stringify(k.slice(0, 40) + "...")} is over 256 bytes`;
  if (/[\u0000-\u001f\u007f-\u009f]/.test(k)) return `key ${JSON.stringify(k)} has a control character`;
  return null;
}

// The editor's text -> {items} or {error}.
function parseDraft(text) {
  let v;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return { error: "Not valid JSON: " + e.message };
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    return { error: "The namespace must be a JSON object of key: value." };
  }
  for (const k of Object.keys(v)) {
    const p = keyProblem(k);
    if (p) return { error: p };
  }
  return { items: v };
}

// The change set from the loaded items to `next`, sorted by key.
function changeSet(current, next) {
  const keys = [...new Set([...Object.keys(current), ...Object.keys(next)])].sort();
  const out = [];
  for (const k of keys) {
    const had = Object.prototype.hasOwnProperty.call(current, k);
    const has = Object.prototype.hasOwnProperty.call(next, k);
    if (had && !has) out.push({ key: k, kind: "removed", before: current[k], after: undefined });
    else if (!had && has) out.push({ key: k, kind: "added", before: undefined, after: next[k] });
    else if (canonical(current[k]) !== canonical(next[k])) out.push({ key: k, kind: "changed", before: current[k], after: next[k] });
  }
  return out;
}

// A change set as the API's ops.
function toOps(changes) {
  return changes.map((c) => (c.kind === "removed"
    ? { op: "delete", key: c.key } : { op: "upsert", key: c.key, value: c.after }));
}

function diffTable(id, changes) {
  return el("table", { id, class: "diff" },
    el("thead", {}, el("tr", {}, el("th", {}, "Change"), el("th", {}, "Key"), el("th", {}, "Before"), el("th", {}, "After"))),
    el("tbody", {}, changes.map((c) =>
      el("tr", { class: c.kind },
        el("td", { class: "kind" }, c.kind),
        el("td", { class: "key" }, c.key),
        el("td", { class: "before" }, el("pre", {}, pretty(c.kind === "added" ? undefined : c.before))),
        el("td", { class: "after" }, el("pre", {}, pretty(c.kind === "removed" ? undefined : c.after)))))));
}

function viewEditor() {
  const d = state.draft;
  const editor = el("textarea", { id: "editor", spellcheck: "false", rows: 18 });
  editor.value = d.text;
  const status = el("p", { id: "editor-status" });
  const previewBtn = el("button", { id: "preview", type: "button" }, "Preview changes");
  const pane = el("div", { id: "preview-pane" });
  const validate = () => {
    d.text = editor.value;
    const r = parseDraft(editor.value);
    status.textContent = r.error || "Valid JSON.";
    status.className = r.error ? "error" : "ok";
    previewBtn.disabled = Boolean(r.error);
    pane.replaceChildren();
    return r;
  };
  editor.addEventListener("input", validate);
  previewBtn.addEventListener("click", () => {
    const r = validate();
    if (!r.error) preview(pane, r.items);
  });
  const cancel = el("button", { id: "cancel", type: "button", class: "secondary", on: { click: () => {
    state.draft = null;
    route();
  } } }, "Cancel");
  const note = d.base === state.version ? `Editing version ${d.base}.`
    : `Editing from version ${d.base}; the preview compares against version ${state.version}, the current one.`;
  setView(nsHeader(state.ns, state.version, "items"), el("p", { class: "note" }, note),
    editor, status, el("div", { class: "tools" }, previewBtn, cancel), pane);
  validate();
}

function preview(pane, next) {
  const changes = changeSet(state.items, next);
  if (changes.length === 0) {
    pane.replaceChildren(el("p", { class: "note", id: "no-changes" }, `No changes against version ${state.version}.`));
    return;
  }
  const comment = el("input", { id: "comment", placeholder: "comment (why)", maxlength: 4096 });
  const author = el("input", { id: "author", placeholder: "author (default: " + state.me.name + ")", maxlength: 128 });
  const publishBtn = el("button", { id: "publish", type: "button" }, `Publish as version ${state.version + 1}`);
  const result = el("div", { id: "publish-result" });
  publishBtn.addEventListener("click", async () => {
    publishBtn.disabled = true;
    const body = {
      expected_version: state.version,
      comment: comment.value,
      changes: toOps(changes),
    };
    if (author.value) body.author = author.value;
    try {
      const r = await api("POST", nsPath(state.ns, "/publish"), body);
      state.draft = null;
      await route();
      banner("ok", `Published version ${r.version} of ${r.namespace}.`);
    } catch (e) {
      publishBtn.disabled = false;
      if (e.code === "version_conflict") showConflict(result);
      else result.replaceChildren(errorBox("publish-error", e));
    }
  });
  pane.replaceChildren(
    el("h3", {}, `${changes.length} change${changes.length === 1 ? "" : "s"} against version ${state.version}`),
    diffTable("change-set", changes),
    el("div", { class: "tools" }, comment, author, publishBtn), result,
    grayStartForm(changes, comment, author)); // release.js
}

// An API error as a box: the message, the field it names and, for a
// schema refusal, every broken rule with its key.
function errorBox(id, e, what) {
  const box = el("div", { id, class: "error" }, el("strong", {}, `Refused: ${what || "nothing was published"}. `), e.message);
  if (e.field) box.appendChild(el("p", { class: "field" }, "Field: ", el("code", {}, e.field)));
  if (e.violations.length) {
    box.appendChild(el("table", { class: "violations" },
      el("thead", {}, el("tr", {}, el("th", {}, "Key"), el("th", {}, "Rule"), el("th", {}, "Problem"))),
      el("tbody", {}, e.violations.map((v) => el("tr", {},
        el("td", { class: "key" }, v.key === null ? "(the whole namespace)" : v.key),
        el("td", { class: "rule" }, v.rule), el("td", { class: "message" }, v.message))))));
  }
  return box;
}

function showConflict(box) {
  const reload = el("button", { id: "reload-draft", type: "button", on: { click: async () => {
    try {
      await loadItems(state.ns);
      state.draft.base = state.version;
      viewEditor();
      banner("info", `Loaded version ${state.version}; your edit is kept. Preview again before publishing.`);
    } catch (e) {
      banner("error", e.message);
    }
  } } }, "Load the current version (keep my edit)");
  box.replaceChildren(el("div", { id: "conflict", class: "error" },
    el("strong", {}, "Conflict: nothing was published. "),
    `Someone else published to ${state.ns} after version ${state.version}, which this preview is based on. `,
    "Load the current version to review the difference against it.", el("br"), reload));
}

// ---------- history, diff, rollback ----------

async function viewHistory(ns) {
  const [h, me] = await Promise.all([api("GET", nsPath(ns, "/history?limit=200")), api("GET", "/v1/admin/namespaces")]);
  const row = me.namespaces.find((n) => n.namespace === ns) || { version: 0, compacted_to: 0 };
  state.ns = ns;
  state.version = row.version;
  const versions = [];
  for (let v = row.version; v >= row.compacted_to; v--) versions.push(v);
  const select = (id, sel) => el("select", { id }, versions.map((v) => el("option", { value: v, selected: v === sel }, "v" + v)));
  const from = select("diff-from", Math.max(row.compacted_to, row.version - 1));
  const to = select("diff-to", row.version);
  const diffBox = el("div", { id: "diff-box" });
  const showDiff = el("button", { id: "show-diff", type: "button", on: { click: async () => {
    try {
      const d = await api("GET", nsPath(ns, `/diff?from=${from.value}&to=${to.value}`));
      diffBox.replaceChildren(el("h3", {}, `From v${d.from} to v${d.to}: ${d.changes.length} change${d.changes.length === 1 ? "" : "s"}`),
        diffTable("diff", d.changes));
    } catch (e) {
      diffBox.replaceChildren(el("p", { class: "error" }, e.message));
    }
  } } }, "Show diff");
  const pane = el("div", { id: "rollback-pane" });
  const rows = h.history.map((a) => {
    const cells = [el("td", { class: "num" }, "v" + a.version), el("td", {}, a.at), el("td", { class: "who" }, a.who),
      el("td", { class: "token" }, a.token === null ? "\u2014" : a.token), el("td", { class: "comment" }, a.comment),
      el("td", { class: "num" }, a.changes), el("td", { class: "kind" }, a.kind || "")];
    const canRoll = isAdmin() && a.version < row.version && a.version >= row.compacted_to;
    cells.push(el("td", {}, canRoll ? el("button", { type: "button", class: "rollback secondary", "data-version": a.version,
      on: { click: () => rollbackPreview(ns, row.version, a.version, pane) } }, "Roll back to v" + a.version) : ""));
    return el("tr", { "data-version": a.version }, cells);
  });
  setView(nsHeader(ns, row.version, "history"),
    el("table", { id: "history" }, el("thead", {}, el("tr", {}, ["Version", "At", "Author", "Token", "Comment", "Changes", "Kind", ""].map((t) => el("th", {}, t)))),
      el("tbody", {}, rows)),
    pane,
    el("h3", {}, "Diff two versions"),
    el("div", { class: "tools" }, el("label", {}, "from ", from), el("label", {}, "to ", to), showDiff), diffBox);
}

async function rollbackPreview(ns, current, target, pane) {
  try {
    const d = await api("GET", nsPath(ns, `/diff?from=${current}&to=${target}`));
    const comment = el("input", { id: "rollback-comment", placeholder: `rollback to version ${target}`, maxlength: 4096 });
    const confirm = el("button", { id: "confirm-rollback", type: "button" }, `Publish the rollback as version ${current + 1}`);
    const cancel = el("button", { type: "button", class: "secondary", on: { click: () => pane.replaceChildren() } }, "Cancel");
    confirm.addEventListener("click", async () => {
      confirm.disabled = true;
      try {
        const body = { to_version: target };
        if (comment.value) body.comment = comment.value;
        const r = await api("POST", nsPath(ns, "/rollback"), body);
        await route();
        banner("ok", r.unchanged ? `Version ${r.version} already has the items of version ${target}; nothing published.`
          : `Rolled back to version ${r.rolled_back_to}: published as version ${r.version}.`);
      } catch (e) {
        confirm.disabled = false;
        // A schema refusal names its rules, as a publish's does.
        pane.appendChild(e.code === "version_conflict"
          ? el("p", { class: "error", id: "rollback-error" },
            "Conflict: someone published meanwhile; nothing was rolled back. Reload the history and try again.")
          : errorBox("rollback-error", e, "nothing was rolled back"));
      }
    });
    pane.replaceChildren(el("h3", {}, `Roll back ${ns} from v${current} to v${target}: ${d.changes.length} change${d.changes.length === 1 ? "" : "s"}`),
      diffTable("rollback-diff", d.changes), el("div", { class: "tools" }, comment, confirm, cancel));
  } catch (e) {
    banner("error", e.message);
  }
}

// ---------- start ----------

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = $("#token").value.trim();
    try {
      await signIn(token);
      await route();
    } catch (e) {
      signOut(e.status === 401 ? "Unknown token." : e.message);
    }
  });
  $("#signout").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", () => {
    route();
  });
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (!saved) {
    signOut("");
    return;
  }
  signIn(saved).then(route, (e) => signOut(e.message));
});
