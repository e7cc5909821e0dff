// bluestreak dashboard: live updates, relative times, lazy step details, confirmation dialogs.
// Plain JavaScript, no dependencies, no inline handlers (the page's Content-Security-Policy allows
// only this file). Every page works without it: forms post and ask for confirmation on the server.
(() => {
  "use strict";
  const body = document.body;
  const interval = parseFloat(body.dataset.liveInterval || "0") * 1000;
  const liveState = document.getElementById("live-state");
  const fragment = { credentials: "same-origin", headers: { "X-Bluestreak-Fragment": "1" } };

  // -- relative times ("3m ago"); the exact time is in the title, shown on hover ----------------
  function coarse(s) {
    if (s < 60) return Math.floor(s) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    if (s < 36000) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    if (s < 86400) return Math.floor(s / 3600) + "h";
    return Math.floor(s / 86400) + "d";
  }
  function relative(ms) {
    const delta = (Date.now() - ms) / 1000;
    if (Math.abs(delta) < 1) return "just now";
    return delta > 0 ? coarse(delta) + " ago" : "in " + coarse(-delta);
  }
  function refreshTimes(root) {
    root.querySelectorAll("time[datetime]").forEach((el) => {
      const ms = Date.parse(el.getAttribute("datetime"));
      if (!Number.isNaN(ms)) el.textContent = relative(ms);
    });
  }

  // -- step details, loaded when opened -------------------------------------------------------
  function load(details) {
    const target = details.querySelector(".lazy");
    if (!details.dataset.src || !target || target.dataset.loaded) return;
    target.dataset.loaded = "1";
    fetch(details.dataset.src, fragment)
      .then((r) => r.text())
      .then((html) => {
        target.innerHTML = html;
        refreshTimes(target);
      })
      .catch(() => {
        target.textContent = "could not load this step; try again";
        delete target.dataset.loaded;
      });
  }
  document.addEventListener(
    "toggle",
    (e) => {
      const d = e.target;
      if (d instanceof HTMLDetailsElement && d.open && d.dataset.src) load(d);
    },
    true,
  );

  // -- live regions: [data-live] is re-fetched and replaced, keeping what the operator opened ----
  function swap(region, html) {
    const open = new Set(
      Array.from(region.querySelectorAll("details[open][data-key]"), (d) => d.dataset.key),
    );
    const active = document.activeElement;
    const focusKey = active && region.contains(active) ? active.dataset.key : null;
    region.innerHTML = html;
    region.querySelectorAll("details[data-key]").forEach((d) => {
      if (open.has(d.dataset.key)) {
        d.open = true;
        load(d);
      }
    });
    refreshTimes(region);
    // Once the workflow has ended, hide what no longer applies to it (the send-event form).
    const ended = !!document.querySelector("[data-final]");
    document.querySelectorAll("[data-unless-final]").forEach((el) => {
      el.hidden = ended;
    });
    if (focusKey) {
      const again = region.querySelector('[data-key="' + CSS.escape(focusKey) + '"]');
      if (again) again.focus();
    }
  }
  function typing(region) {
    const a = document.activeElement;
    return a && region.contains(a) && a.matches("input, textarea, select");
  }
  function setState(text) {
    if (!liveState) return;
    liveState.textContent = text;
    liveState.dataset.state = text;
  }
  let busy = false;
  async function tick() {
    if (busy || document.hidden || document.querySelector("dialog[open]")) return;
    busy = true;
    try {
      for (const region of document.querySelectorAll("[data-live]")) {
        if (typing(region)) continue;
        const response = await fetch(region.dataset.live, fragment);
        if (response.status === 401) {
          window.location.reload();
          return;
        }
        if (response.status >= 500) throw new Error("HTTP " + response.status);
        const html = await response.text();
        if (document.querySelector("dialog[open]") || typing(region)) continue; // opened while fetching
        if (html !== region.dataset.last) {
          region.dataset.last = html;
          swap(region, html);
        }
      }
      setState("live");
    } catch (err) {
      setState("offline");
    } finally {
      busy = false;
    }
  }
  if (interval > 0 && document.querySelector("[data-live]")) {
    setState("live");
    window.setInterval(tick, interval);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
  } else {
    setState("");
  }
  window.setInterval(() => refreshTimes(document), 15000);

  // -- confirmation: every action form asks first, in a modal dialog --------------------------
  const dialog = document.getElementById("confirm");
  let pending = null;
  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.confirm || !dialog) return;
    e.preventDefault();
    // What to send is taken now: a live update may replace the form while the dialog is open.
    pending = { action: form.action, data: new FormData(form) };
    dialog.querySelector(".question").textContent = form.dataset.confirm;
    dialog.querySelector(".subject .verb").textContent = form.dataset.label || "Confirm";
    const target = form.elements.namedItem("id");
    dialog.querySelector(".subject .target").textContent = target && "value" in target ? target.value : "";
    const preview = dialog.querySelector(".preview");
    const fields = (form.dataset.preview || "").split(",").filter(Boolean);
    preview.textContent = fields
      .map((name) => {
        const el = form.elements.namedItem(name);
        return el && "value" in el && el.value ? name + ": " + el.value : "";
      })
      .filter(Boolean)
      .join("\n");
    preview.hidden = !preview.textContent;
    const ok = dialog.querySelector("button[value=ok]");
    ok.textContent = form.dataset.label || "Confirm";
    ok.className = form.dataset.danger ? "danger" : "primary";
    dialog.returnValue = "";
    dialog.showModal();
    (form.dataset.danger ? dialog.querySelector("button[value=cancel]") : ok).focus();
  });
  if (dialog) {
    dialog.addEventListener("close", () => {
      const chosen = pending;
      pending = null;
      if (dialog.returnValue !== "ok" || !chosen) return;
      chosen.data.set("confirmed", "yes");
      const form = document.createElement("form");
      form.method = "post";
      form.action = chosen.action;
      form.hidden = true;
      for (const [name, value] of chosen.data) {
        const input = document.createElement("input");
        input.type = "hidden";
        input.name = name;
        input.value = String(value);
        form.appendChild(input);
      }
      document.body.appendChild(form);
      form.submit();
    });
  }

  // -- keyboard: "/" jumps to the id filter -----------------------------------------------------
  document.addEventListener("keydown", (e) => {
    if (e.key !== "/" || e.ctrlKey || e.metaKey || e.altKey) return;
    const a = document.activeElement;
    if (a && a.matches("input, textarea, select")) return;
    const search = document.getElementById("filter-id");
    if (search) {
      e.preventDefault();
      search.focus();
      search.select();
    }
  });

  refreshTimes(document);
})();
