// The admin console: one module, a view per page (data-admin-view). Everything comes from
// /api/admin/… (403 for anyone but an administrator); every change asks for a reason, which the
// api keeps in the audit log with the change.
import { api, ApiError } from "../api.js";
import { startPage } from "../common.js";
import { clearErrors, showError, showStatus } from "../forms.js";
import { credits, dateTime, statusLabel } from "../format.js";

const root = document.querySelector("[data-admin-view]");
const view = root.dataset.adminView;
const $ = (name) => root.querySelector(`[data-${name}]`);
const PAGE_SIZE = 20;

let page = 1;
let total = 0;

/** An element with text children only: nothing from the api is ever parsed as HTML. */
function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null && value !== false) element.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function button(label, onClick, className = "") {
  const made = el("button", { type: "button", class: className || null }, label);
  made.addEventListener("click", () => onClick(made));
  return made;
}

function table(headers, rows, caption) {
  return el(
    "table",
    {},
    el("caption", { class: "visually-hidden" }, caption),
    el("thead", {}, el("tr", {}, headers.map((header) => el("th", { scope: "col" }, header)))),
    el("tbody", {}, rows.length ? rows : [el("tr", {}, el("td", { colspan: headers.length }, "Nothing here."))]),
  );
}

function row(...cells) {
  return el("tr", {}, cells.map((cell) => el("td", {}, cell)));
}

function notice(text) {
  $("admin-notice").textContent = text;
  $("admin-notice").hidden = !text;
}

function fail(error) {
  $("admin-error").textContent = error.message;
  $("admin-error").hidden = false;
}

function filters() {
  const form = $("filters");
  return form ? Object.fromEntries(new FormData(form).entries()) : {};
}

// --- the dialog every change goes through: a reason (and for credits, an amount) ------------

function ask({ title, text, ok, amount = false }) {
  const dialog = $("admin-dialog");
  const form = $("admin-form");
  form.reset();
  clearErrors(form);
  $("dialog-title").textContent = title;
  $("dialog-text").textContent = text;
  $("dialog-ok").textContent = ok;
  $("amount-field").hidden = !amount;
  dialog.showModal();
  (amount ? form.elements.amount : form.elements.reason).focus();
  return { dialog, form };
}

/** Open the dialog; `send(values)` runs on submit, and its errors stay in the dialog. */
function change(options, send) {
  const { dialog, form } = ask(options);
  const cancel = form.querySelector("[data-dialog-cancel]");
  const close = () => dialog.close();
  cancel.onclick = close;
  form.onsubmit = async (event) => {
    event.preventDefault();
    clearErrors(form);
    const values = Object.fromEntries(new FormData(form).entries());
    const submit = form.querySelector("[data-dialog-ok]");
    submit.disabled = true;
    try {
      const done = await send(values);
      dialog.close();
      notice(done);
      await load();
    } catch (error) {
      if (error instanceof ApiError) showError(form, error);
      else showStatus(form, String(error));
    } finally {
      submit.disabled = false;
    }
  };
}

const reasonOf = (values) => (values.reason || "").trim() || null;

// --- views --------------------------------------------------------------------------------

async function dashboard() {
  const [stats, daily] = await Promise.all([api.get("admin/stats"), api.get("admin/stats/daily")]);
  const today = stats.videosToday;
  const figures = [
    ["Users", `${stats.users.total} (${stats.users.newToday} new today, ${stats.users.banned} banned)`],
    ["Videos today", `${Object.values(today).reduce((a, b) => a + b, 0)}: ${today.completed} ready, ${today.failed} failed, ${today.cancelled} cancelled, ${today.queued + today.in_progress} in the works`],
    ["Credits today", `${stats.creditsToday.spent} spent, ${stats.creditsToday.refunded} refunded, ${stats.creditsToday.issued} issued`],
    ["Credits in all", `${stats.credits.spent} spent, ${stats.credits.refunded} refunded, ${stats.credits.issued} issued`],
    ["Queue", `${stats.queue.depth} waiting, ${stats.queue.running} running` + (stats.queue.oldestWaitSeconds === null ? "" : `, oldest waiting ${stats.queue.oldestWaitSeconds} s`)],
    ["Provider", `${stats.provider.name} (${stats.provider.status})`],
  ];
  $("figures").replaceChildren(...figures.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
  for (const holder of root.querySelectorAll("[data-chart]")) {
    // The api drew the chart; it is parsed as SVG (never as HTML) and adopted into the page.
    const svg = new DOMParser().parseFromString(daily.charts[holder.dataset.chart] ?? "", "image/svg+xml");
    const chart = svg.documentElement;
    holder.replaceChildren(chart.nodeName === "svg" ? document.importNode(chart, true) : el("p", {}, "No chart."));
  }
  $("workers").replaceChildren(
    table(
      ["Worker", "Host", "PID", "Last beat"],
      stats.workers.map((w) => row(w.id, w.hostname, w.pid, `${w.secondsSinceBeat} s ago`)),
      "Workers",
    ),
  );
}

async function users() {
  const { search } = filters();
  const answer = await api.get("admin/users", { search, page, limit: PAGE_SIZE });
  total = answer.total;
  const rows = answer.items.map((user) =>
    row(
      user.email,
      user.nickname,
      user.role,
      user.status,
      String(user.credits),
      dateTime(user.createdAt),
      el(
        "span",
        { class: "row-actions" },
        button("Credits…", () =>
          change(
            { title: `Credits of ${user.email}`, text: `Balance: ${credits(user.credits)}. The user sees the reason in their history.`, ok: "Adjust", amount: true },
            async (values) => {
              const changed = await api.post(`admin/users/${user.id}/credits`, {
                amount: Number.parseInt(values.amount, 10),
                reason: (values.reason || "").trim(),
              });
              return `${changed.email} now has ${credits(changed.credits)}.`;
            },
          ),
        ),
        user.status === "active"
          ? button("Ban…", () =>
              change({ title: `Ban ${user.email}?`, text: "Every session of the account ends at once.", ok: "Ban" }, async (values) => {
                await api.put(`admin/users/${user.id}/status`, { status: "banned", reason: reasonOf(values) });
                return `${user.email} is banned.`;
              }),
            "button-danger")
          : button("Unban…", () =>
              change({ title: `Unban ${user.email}?`, text: "The account can sign in again.", ok: "Unban" }, async (values) => {
                await api.put(`admin/users/${user.id}/status`, { status: "active", reason: reasonOf(values) });
                return `${user.email} is active again.`;
              }),
            ),
      ),
    ),
  );
  $("table").replaceChildren(table(["Email", "Nickname", "Role", "Status", "Credits", "Joined", ""], rows, "Users"));
}

async function videos() {
  const { status, user } = filters();
  const answer = await api.get("admin/videos", { status, user, page, limit: PAGE_SIZE });
  total = answer.total;
  const rows = answer.items.map((video) =>
    row(
      dateTime(video.createdAt),
      video.userEmail,
      video.prompt.length > 80 ? `${video.prompt.slice(0, 79)}…` : video.prompt,
      `${video.model}, ${video.seconds} s`,
      statusLabel(video.status),
      String(video.cost),
      video.status === "queued" || video.status === "in_progress"
        ? button("Cancel…", () =>
            change(
              { title: "Cancel this video?", text: `${video.userEmail} gets ${credits(video.cost)} back.`, ok: "Cancel and refund" },
              async (values) => {
                await api.post(`admin/videos/${video.id}/cancel`, { reason: reasonOf(values) });
                return `Cancelled; ${credits(video.cost)} refunded to ${video.userEmail}.`;
              },
            ),
          "button-danger")
        : "",
    ),
  );
  $("table").replaceChildren(table(["Created", "User", "Prompt", "Model", "Status", "Cost", ""], rows, "Videos"));
}

async function jobs() {
  const { status } = filters();
  const answer = await api.get("admin/jobs", { status, page, limit: PAGE_SIZE });
  total = answer.total;
  const rows = answer.items.map((job) =>
    row(
      String(job.id),
      job.userEmail ?? "",
      job.status,
      String(job.attempts),
      job.videoError || job.lastError || "",
      dateTime(job.updatedAt),
      job.status === "failed"
        ? button("Retry…", () =>
            change(
              { title: `Retry job ${job.id}?`, text: "It starts again from the beginning; the video is charged again (its failure was refunded).", ok: "Retry" },
              async (values) => {
                await api.post(`admin/jobs/${job.id}/retry`, { reason: reasonOf(values) });
                return `Job ${job.id} is queued again.`;
              },
            ),
          )
        : "",
    ),
  );
  $("table").replaceChildren(table(["Job", "User", "Status", "Attempts", "Error", "Updated", ""], rows, "Jobs"));
}

async function audit() {
  const { action, actor } = filters();
  const answer = await api.get("admin/audit", { action, actor, page, limit: PAGE_SIZE });
  total = answer.total;
  const change = (entry) => `${JSON.stringify(entry.before ?? {})} → ${JSON.stringify(entry.after ?? {})}`;
  const rows = answer.items.map((entry) =>
    row(dateTime(entry.createdAt), entry.actor, entry.action, `${entry.targetType} ${entry.targetId}`, entry.reason ?? "", change(entry), entry.requestId),
  );
  $("table").replaceChildren(table(["When", "Who", "Action", "Target", "Reason", "Change", "Request"], rows, "Audit log"));
}

async function keys() {
  const stats = await api.get("admin/stats");
  const provider = stats.provider;
  $("provider").textContent = `Provider: ${provider.name} (${provider.status}).`;
  const state = (key) =>
    key.state === "resting" ? `resting until ${dateTime(key.restingUntil)}` : key.state === "disabled" ? `disabled: ${key.reason}` : key.state;
  $("keys").replaceChildren(
    table(
      ["Key", "State", "Successes", "Rate limits"],
      provider.keys.map((key) => row(key.key, state(key), key.successes ?? "", key.rateLimits ?? "")),
      "Provider keys",
    ),
  );
}

async function config() {
  const answer = await api.get("admin/config");
  const shown = (value) => (typeof value === "string" ? value : JSON.stringify(value));
  $("config").replaceChildren(
    table(["Setting", "Value"], Object.entries(answer.settings).map(([name, value]) => row(name, shown(value))), "Settings"),
  );
}

const VIEWS = { dashboard, users, videos, jobs, audit, keys, config };

function showPager() {
  if (!$("page-info")) return;
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
  $("page-info").textContent = `Page ${page} of ${pages} (${total})`;
  $("prev").disabled = page <= 1;
  $("next").disabled = page >= pages;
}

async function load() {
  $("admin-error").hidden = true;
  try {
    await VIEWS[view]();
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      $("admin-status").textContent = "This page is for administrators: your account cannot see it.";
      $("admin-body").hidden = true;
      return;
    }
    fail(error);
    return;
  }
  $("admin-status").hidden = true;
  $("admin-body").hidden = false;
  showPager();
}

$("filters")?.addEventListener("submit", (event) => {
  event.preventDefault();
  page = 1;
  notice("");
  load();
});
$("prev")?.addEventListener("click", () => {
  page -= 1;
  load();
});
$("next")?.addEventListener("click", () => {
  page += 1;
  load();
});

startPage(async () => {
  await load();
});
