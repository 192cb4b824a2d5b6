// Live waiting room on the practitioner's teleconsultation page (WebSocket push).
(() => {
  "use strict";
  const box = document.getElementById("lobby");
  if (!box) return;
  const $ = (id) => document.getElementById(id);
  const text = (id) => ($(id) ? $(id).textContent : id);
  let retry = 0;

  function render(items) {
    const list = $("lobby-list");
    list.replaceChildren();
    $("lobby-empty").hidden = items.length > 0;
    for (const it of items) {
      const li = $("lobby-item").content.firstElementChild.cloneNode(true);
      li.dataset.appointment = it.id;
      li.querySelector(".name").textContent = it.name;
      li.querySelector(".state").textContent = `(${text(it.status === "admitted" ? "t-admitted" : "t-waiting")})`;
      const c = it.check;
      li.querySelector(".check").textContent = c && c.timed_out ? text("t-timedout") : c
        ? [c.camera ? text("t-camera-ok") : text("t-camera-bad"), c.microphone ? text("t-mic-ok") : text("t-mic-bad"),
           c.connection === "good" ? text("t-good") : text(c.connection === "measuring" ? "t-measuring" : "t-weak")].join(", ")
        : text("t-nocheck");
      li.querySelector("form.admit button").setAttribute("aria-label", `${text("t-admit")} ${it.name}`);
      li.querySelector("form.postpone button").setAttribute("aria-label", `${text("t-postpone")} ${it.name}`);
      li.querySelector("form.admit").action = `/video/appointments/${it.id}/admit`;
      li.querySelector("form.postpone").action = `/video/appointments/${it.id}/postpone`;
      if (it.status === "admitted") {
        li.querySelector("form.admit").remove(); li.querySelector("form.postpone").remove();
        const a = document.createElement("a"); a.href = `/video/call/${it.id}`; a.textContent = text("t-join");
        li.append(" ", a);
      }
      list.append(li);
    }
    // Pre-warm the call with the patient who waits first (camera, ICE servers, their socket).
    const kv = window.konsilVideo;
    const first = items.find((it) => it.status === "waiting");
    if (kv && kv.prewarm) kv.prewarm(first ? first.id : null);
  }

  // Admitting opens the call in this page (call.js); without it, the form posts as usual.
  $("lobby-list").addEventListener("submit", (e) => {
    const form = e.target;
    const kv = window.konsilVideo;
    if (!form.classList.contains("admit") || !kv || !kv.admit) return;
    e.preventDefault();
    const li = form.closest("li");
    kv.admit(li.dataset.appointment, li.querySelector(".name").textContent).catch(() => form.submit());
  });

  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/video/lobby/ws`);
    ws.onopen = () => { retry = 0; };
    ws.onmessage = (ev) => { const m = JSON.parse(ev.data); if (m.type === "waiting") render(m.items); };
    ws.onclose = () => { retry = Math.min(retry + 1, 6); setTimeout(connect, 500 * retry); };
  }
  connect();
})();
