// Live session page: the quorum indicator, attendance and agenda follow the session as it
// happens. Updates are pushed by the server (Server-Sent Events, /rcp/sessions/{id}/events);
// a browser without EventSource polls the quorum JSON every 3 seconds instead.
(function () {
  "use strict";
  var panel = document.getElementById("quorum-panel");
  if (!panel) { return; }
  var state = document.getElementById("quorum-state");
  var detail = document.getElementById("quorum-detail");

  function show(q) {
    state.textContent = q.met ? panel.dataset.met : panel.dataset.notMet;
    state.className = q.met ? "ok" : "error";
    var names = q.present.map(function (p) { return p.name; }).join(", ");
    var missing = q.missing_labels || q.missing_required;
    detail.textContent = q.physicians_present + " " + panel.dataset.physicians + " (" + names + ")" +
      (missing.length ? " · " + panel.dataset.missing + ": " + missing.join(", ") : "");
  }

  // Attendance and agenda: read again through the page itself (an audited read), swap the parts.
  function reloadParts() {
    fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        ["attendance-body", "live-agenda"].forEach(function (id) {
          var fresh = doc.getElementById(id);
          var old = document.getElementById(id);
          if (fresh && old) { old.replaceWith(document.adoptNode(fresh)); }
        });
      })
      .catch(function () { /* the next change retries */ });
  }

  function poll() {
    fetch(panel.dataset.quorumUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (q) { if (q) { show(q); } })
      .catch(function () { /* next poll retries */ });
  }

  if (window.EventSource && panel.dataset.eventsUrl) {
    var source = new EventSource(panel.dataset.eventsUrl);
    source.addEventListener("quorum", function (e) { show(JSON.parse(e.data)); });
    source.addEventListener("agenda", reloadParts);
    window.addEventListener("pagehide", function () { source.close(); });
  } else {
    setInterval(poll, 3000);
  }
})();
