// Keeps the live part of a dashboard page (`#live`, with the address of its fresh copy in
// `data-live`) up to date: fetched every two seconds, swapped in when it changed. A form being
// used is left alone, and a lost session goes back to the sign-in page.
"use strict";
(() => {
  const live = document.getElementById("live");
  if (!live) return;
  const updated = document.getElementById("updated");
  let last = null;
  let pressing = false;
  live.addEventListener("pointerdown", () => { pressing = true; });
  document.addEventListener("pointerup", () => { setTimeout(() => { pressing = false; }, 300); });

  const stamp = (text, stale) => {
    document.body.classList.toggle("stale", stale);
    if (updated) updated.textContent = text;
  };

  const refresh = async () => {
    const focused = document.activeElement;
    if (document.hidden || pressing || (focused && focused !== document.body && live.contains(focused))) return;
    try {
      const response = await fetch(live.dataset.live, { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) { window.location.assign("/ui/login"); return; }
      if (!response.ok) { stamp(`not updated: the server answered ${response.status}`, true); return; }
      const html = await response.text();
      if (html !== last) { last = html; live.innerHTML = html; }
      stamp(`live · ${new Date().toLocaleTimeString()}`, false);
    } catch (error) {
      stamp("not updated: the server cannot be reached", true);
    }
  };
  setInterval(refresh, 2000);
})();
