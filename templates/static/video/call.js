// Konsil teleconsultation: pre-call check (patient), waiting room, and the browser-to-browser
// call with WebSocket signalling, chat and document exchange. No inline handlers (CSP).
(() => {
  "use strict";
  const app = document.getElementById("video-app");
  if (!app) return;
  const $ = (id) => document.getElementById(id);
  const role = app.dataset.role;
  let appt = app.dataset.appointment;
  const csrf = app.dataset.csrf;
  const T = $("i18n") ? $("i18n").dataset : {};
  const C = $("check-i18n") ? $("check-i18n").dataset : {};
  let ws = null, pc = null, localStream = null, iceConfig = null, screenTrack = null;
  let inbox = Promise.resolve();
  let ended = false, inCall = false, pendingCandidates = [], wsRetry = 0, generation = 0, hellos = 0;
  const events = [];
  const note = (e) => { events.push(e); if (events.length > 50) events.shift(); };

  const say = (text) => { const el = $("call-status"); if (el) el.textContent = text || ""; };
  const jsonHeaders = { "Content-Type": "application/json", "X-CSRF-Token": csrf };

  // One request for the ICE servers and one camera/microphone request, however many steps
  // ask at once (the dashboard's pre-warming and the greeting, the check and the call).
  let icePending = null, mediaPending = null;
  function ice() {
    if (iceConfig) return Promise.resolve(iceConfig);
    if (!icePending) {
      icePending = (async () => {
        const r = await fetch("/video/api/ice", { credentials: "same-origin" });
        if (!r.ok) throw new Error("ICE " + r.status);
        iceConfig = await r.json();
        return iceConfig;
      })();
      icePending.catch(() => { /* asked again next time */ }).finally(() => { icePending = null; });
    }
    return icePending;
  }

  function media() {
    if (localStream) return Promise.resolve(localStream);
    if (!mediaPending) {
      mediaPending = (async () => {
        try {
          localStream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
        } catch (e) {
          const msg = (e && (e.name === "NotFoundError" || e.name === "OverconstrainedError")) ? T.nodevice : T.denied;
          for (const id of ["check-error", "call-status"]) {
            const el = $(id); if (el) { el.textContent = msg; el.hidden = false; }
          }
          app.dataset.mediaError = e && e.name ? e.name : "error";
          throw e;
        }
        const local = $("local"); if (local) local.srcObject = localStream;
        return localStream;
      })();
      mediaPending.catch(() => { /* asked again next time */ }).finally(() => { mediaPending = null; });
    }
    return mediaPending;
  }

  // ------------------------------------------------------------- stats

  async function statsOf(conn) {
    const out = { framesDecoded: 0, fps: null, audioPackets: 0, audioEnergy: 0, rttMs: null,
      bytesReceived: 0, localCandidateType: null, remoteCandidateType: null, connection: conn ? conn.connectionState : null };
    if (!conn) return out;
    const report = await conn.getStats();
    let pair = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp") out.bytesReceived += (s.bytesReceived || 0) + (s.headerBytesReceived || 0);
      if (s.type === "inbound-rtp" && s.kind === "video") {
        out.framesDecoded += s.framesDecoded || 0;
        if (s.framesPerSecond) out.fps = s.framesPerSecond;
      }
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        out.audioPackets += s.packetsReceived || 0;
        out.audioEnergy += s.totalAudioEnergy || 0;
      }
      if (s.type === "transport" && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
    });
    if (!pair) report.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
    if (pair) {
      if (pair.currentRoundTripTime !== undefined) out.rttMs = pair.currentRoundTripTime * 1000;
      const l = report.get(pair.localCandidateId), r = report.get(pair.remoteCandidateId);
      out.localCandidateType = l ? l.candidateType : null;
      out.remoteCandidateType = r ? r.candidateType : null;
    }
    return out;
  }
  // Wall-clock times (Date.now()) of the first time each step happened: the bench's breakdown.
  const marks = {};
  const mark = (name) => { if (!(name in marks)) marks[name] = Date.now(); };
  const kv = { framesDecoded: 0, last: null, marks, stats: () => statsOf(pc),
    state: () => ({ inCall, ended, role, generation, events, hellos, admitted }),
    sending: () => {
      const snd = pc && pc.getSenders().find((x) => x.track && x.track.kind === "video");
      return snd ? snd.track.label : null;
    } };
  window.konsilVideo = kv;
  const remoteVideo = $("remote");
  if (remoteVideo) {
    // When the first picture of the other person is ready (for the page, tests and the bench).
    remoteVideo.addEventListener("loadeddata", () => { if (!kv.firstFrameAt) { kv.firstFrameAt = Date.now(); mark("first-frame"); } });
  }
  // While in a call, keep the latest numbers where tests and the page can read them at once.
  setInterval(async () => {
    if (!pc || !inCall) return;
    try { kv.last = await statsOf(pc); kv.framesDecoded = kv.last.framesDecoded; } catch (e) { /* closed */ }
  }, 250);

  // ------------------------------------------------------------- pre-call check (patient)

  // The offer carries the host candidates once gathered. Chrome adds its UDP host candidates
  // within milliseconds and its TCP ones ~100 ms later; the echo peer (aiortc) uses UDP only,
  // so a short quiet spell after a UDP candidate is enough ("complete", or 4 s, otherwise).
  function gathered(conn) {
    return new Promise((resolve) => {
      let quiet = null;
      conn.addEventListener("icecandidate", (e) => {
        if (!e.candidate) { resolve(); return; }
        if (e.candidate.protocol === "udp") { clearTimeout(quiet); quiet = setTimeout(resolve, 30); }
      });
      conn.addEventListener("icegatheringstatechange", () => { if (conn.iceGatheringState === "complete") resolve(); });
      setTimeout(resolve, 4000);
    });
  }

  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  // The frame rate is measured over up to 1 s of the echo; at least 300 ms when the doctor
  // admits meanwhile (the check then stops so that the call has the connection to itself).
  const FPS_WINDOW_MS = 1000, FPS_MIN_MS = 300;
  let checkStop = false;

  // The camera and the check's peer connection (offer, ICE gathering) are prepared at once,
  // while the patient reads the entry page; nothing reaches the server before entry.
  let checkPrep = null;
  function prepareCheck() {
    if (!checkPrep) {
      checkPrep = (async () => {
        const stream = await media();
        mark("media");
        const cv = $("check-video"); if (cv && !cv.srcObject) cv.srcObject = stream;
        const cpc = new RTCPeerConnection({ iceServers: [] });
        const ready = gathered(cpc);
        // The echo decodes and re-encodes on the server: a small picture is enough to see
        // that the camera works and to measure the frame rate (the call sends the full one).
        const small = new MediaStream(stream.getAudioTracks());
        for (const t of stream.getVideoTracks()) {
          const c = t.clone();
          c.applyConstraints({ width: 320, height: 240 }).catch(() => { /* sent as it is */ });
          small.addTrack(c);
        }
        small.getTracks().forEach((t) => cpc.addTrack(t, small));
        cpc.ontrack = (e) => { $("check-video").srcObject = e.streams[0] || new MediaStream([e.track]); };
        await cpc.setLocalDescription(await cpc.createOffer());
        await ready;
        mark("check-offer");
        return cpc;
      })();
      checkPrep.catch(() => { checkPrep = null; });
    }
    return checkPrep;
  }

  async function postCheck(result) {
    const r = await fetch(`/video/api/${appt}/check/done`, { method: "POST", headers: jsonHeaders,
      credentials: "same-origin", body: JSON.stringify(result) });
    return r.ok ? r.json() : Object.assign({ connection: "weak" }, result);
  }

  function showCheck(clean) {
    $("c-camera").textContent = clean.camera ? C.cameraOk : C.cameraBad;
    $("c-mic").textContent = clean.microphone ? C.micOk : C.micBad;
    const measuring = clean.connection === "measuring";
    if (!measuring) $("c-net").textContent = clean.connection === "good" ? C.netGood : C.netWeak;
    for (const [id, ok] of [["c-camera", clean.camera], ["c-mic", clean.microphone], ["c-net", clean.connection === "good"]]) {
      $(id).className = id === "c-net" && measuring ? "" : (ok ? "ok" : "bad");
    }
    app.dataset.check = JSON.stringify(clean);
  }

  // given/answer: the connection prepared before entry and the echo peer's answer, when the
  // entry form carried the offer (one request for both).
  async function runCheck(given, answer) {
    $("check-error").hidden = true; $("check-retry").hidden = true;
    checkStop = false;
    let cpc = given;
    if (!cpc) try { cpc = await prepareCheck(); } catch (e) {
      if (!app.dataset.mediaError) { $("check-error").textContent = `${C.failed} ${e.message || e}`; $("check-error").hidden = false; }
      $("check-retry").hidden = false; return;
    }
    checkPrep = null;  // one connection per check
    try {
      let desc = answer;
      if (!desc) {
        const r = await fetch(`/video/api/${appt}/check`, { method: "POST", headers: jsonHeaders,
          credentials: "same-origin", body: JSON.stringify({ sdp: cpc.localDescription.sdp, type: cpc.localDescription.type }) });
        if (!r.ok) throw new Error(await r.text().then((t) => t.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").slice(0, 200)));
        desc = await r.json();
      }
      mark("check-answer");
      // Into the waiting room (the doctor sees the patient, then the result) while the echo runs.
      if (!ws) connect();
      await cpc.setRemoteDescription(desc);
      // Watch for up to 10 s. Once the picture, the sound and a round-trip time came back, the
      // patient and the doctor are told (camera and microphone work); the frame rate is then
      // measured from the first echoed frame on, and the connection's verdict follows.
      let first = null, last = null, early = null;
      for (let i = 0; i < 200; i++) {
        await wait(50);
        const s = await statsOf(cpc);
        const now = performance.now();
        if (s.framesDecoded > 0 && !first) { first = { t: now, frames: s.framesDecoded }; mark("check-frame"); }
        if (s.audioPackets > 0) mark("check-audio");
        if (s.rttMs !== null) mark("check-rtt");
        last = { t: now, s };
        if (first && s.audioPackets > 0 && s.rttMs !== null) {
          if (!early) {
            early = postCheck({ camera: true, microphone: true, rtt_ms: Math.round(s.rttMs), fps: null, final: false })
              .then((clean) => { showCheck(clean); $("waiting").hidden = false; mark("check-early"); });
          }
          const span = now - first.t;
          if (span >= FPS_WINDOW_MS || (checkStop && span >= FPS_MIN_MS)) break;
        }
      }
      mark("check-measured");
      const s = last.s;
      const fps = first && last.t > first.t ? (s.framesDecoded - first.frames) * 1000 / (last.t - first.t) : 0;
      const result = { camera: s.framesDecoded > 0, microphone: s.audioPackets > 0,
        rtt_ms: s.rttMs === null ? null : Math.round(s.rttMs), fps: Math.round(fps * 10) / 10, final: true };
      if (early) await early.catch(() => { /* the final result follows */ });
      const clean = await postCheck(result);
      showCheck(clean);
      mark("check-done");
    } catch (e) {
      $("check-error").textContent = `${C.failed} ${e.message || e}`;
      $("check-error").hidden = false; $("check-retry").hidden = false;
      return;
    } finally {
      cpc.getSenders().forEach((x) => { if (x.track && x.track.kind === "video") x.track.stop(); });
      cpc.close();
    }
    $("waiting").hidden = false;
    if (!ws) connect();
  }

  // Identity + consent submitted by the page itself: the check and the waiting room continue
  // here, without loading another page. Without script, the form posts as usual.
  function wireEntry() {
    const form = $("entry-form");
    prepareCheck().catch(() => { /* shown by media(); tried again after entry */ });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const btn = $("entry-submit"); btn.disabled = true;
      // The check's offer goes with the form when ready (not waiting on a permission prompt).
      const cpc = await Promise.race([prepareCheck().catch(() => null), wait(1000).then(() => null)]);
      const body = new URLSearchParams(new FormData(form));
      if (cpc) body.set("check_sdp", cpc.localDescription.sdp);
      let r;
      try {
        r = await fetch(form.action, { method: "POST", body,
          headers: { Accept: "application/json" }, credentials: "same-origin" });
      } catch (err) { btn.disabled = false; form.submit(); return; }
      btn.disabled = false;
      const json = (r.headers.get("Content-Type") || "").startsWith("application/json");
      if (r.status === 400 && json) {
        const body = await r.json();
        const box = $("entry-error"); box.replaceChildren();
        const p = document.createElement("p"); p.textContent = body.error; box.append(p);
        const ul = document.createElement("ul");
        for (const [name, why] of Object.entries(body.fields || {})) {
          const li = document.createElement("li"); li.textContent = why; ul.append(li);
          const input = $("f-" + name); if (input) input.setAttribute("aria-invalid", "true");
        }
        box.append(ul); box.hidden = false;
        return;
      }
      if (!r.ok || !json) { form.submit(); return; }  // the server's own page says why
      const entered = await r.json();
      mark("entered");
      history.replaceState(null, "", entered.room);
      $("entry").hidden = true;
      app.dataset.status = "waiting";
      if (cpc && entered.check) runCheck(cpc, entered.check); else runCheck();
      ice().catch(() => { /* fetched again for the call */ });
    });
  }

  // ------------------------------------------------------------- the call

  // Camera and microphone reach the other person only once the appointment is admitted: the
  // server said so (status "admitted", or the greeting or "peer" message of an admitted call)
  // and, on the doctor's dashboard, this page is the one that admitted. While the patient
  // waits, the two pages already hold a peer connection (ICE, DTLS) whose senders carry no
  // track: admitting then only attaches the tracks (replaceTrack, no renegotiation).
  let admitted = false, peerPresent = false;

  function showCall() {
    inCall = true;
    $("call").hidden = false; $("side").hidden = false;
    const check = $("check"); if (check) check.hidden = true;
    const w = $("waiting"); if (w) w.hidden = true;
  }

  const usable = (conn) => !!conn && conn === pc && conn.signalingState !== "closed" &&
    conn.connectionState !== "failed" && conn.connectionState !== "closed";

  // Each negotiation has a number (the doctor's offer gives it; the answer and every candidate
  // carry it): when the doctor offers twice in a row (both parties arriving at once), an
  // answer or a candidate of the replaced connection is not applied to the new one.
  function newPeer(nid) {
    if (pc) { try { pc.close(); } catch (e) { /* already closed */ } }
    pendingCandidates = [];
    generation += 1;
    note("new-peer");
    const conn = new RTCPeerConnection({ iceServers: iceConfig.iceServers, iceTransportPolicy: iceConfig.iceTransportPolicy });
    conn.nid = nid === undefined ? `${Date.now().toString(36)}.${generation}` : nid;
    pc = conn;
    conn.onicecandidate = (e) => { if (e.candidate) send({ type: "signal", data: { candidate: e.candidate.toJSON(), nid: conn.nid } }); };
    // This connection's incoming tracks (their senders name no stream).
    conn.ontrack = () => { $("remote").srcObject = new MediaStream(conn.getReceivers().map((r) => r.track)); };
    conn.onconnectionstatechange = () => {
      if (pc !== conn) return;
      note("pc-" + conn.connectionState);
      if (conn.connectionState === "connected") { mark("connected"); if (admitted) say(T.connected); }
      if (conn.connectionState === "failed" || conn.connectionState === "disconnected") {
        if (admitted) say(T.reconnecting);
        // aiortc-style: no ICE restart; a new connection is negotiated from scratch.
        setTimeout(() => {
          if (pc !== conn || ended || (conn.connectionState !== "failed" && conn.connectionState !== "disconnected")) return;
          if (role === "patient") send({ type: "restart" }); else if (peerPresent) offer();
        }, conn.connectionState === "failed" ? 0 : 3000);
      }
    };
    return conn;
  }

  // The senders get the camera (or the shared screen) and the microphone, once admitted.
  async function attach(conn) {
    if (!admitted || !localStream || !usable(conn)) return;
    for (const t of conn.getTransceivers()) {
      if (t.currentDirection === "stopped") continue;
      const track = t.receiver.track.kind === "video"
        ? (screenTrack || localStream.getVideoTracks()[0]) : localStream.getAudioTracks()[0];
      if (track && t.sender.track !== track) await t.sender.replaceTrack(track);
    }
    mark("attached");
    if (conn.connectionState === "connected") say(T.connected);
  }

  async function offer() {
    await media(); await ice();
    const conn = newPeer();
    for (const kind of ["audio", "video"]) conn.addTransceiver(kind, { direction: "sendrecv" });
    await attach(conn);
    if (admitted) say(T.connecting);
    mark(admitted ? "offer" : "early-offer");
    await conn.setLocalDescription(await conn.createOffer());
    send({ type: "signal", data: { description: { type: conn.localDescription.type, sdp: conn.localDescription.sdp }, nid: conn.nid } });
  }

  async function onSignal(data) {
    if (!data) return;
    const current = () => !!pc && (data.nid === undefined || pc.nid === data.nid);
    if (data.description) {
      if (data.description.type === "offer") {
        await media(); await ice();
        const conn = newPeer(data.nid);
        mark(admitted ? "offer" : "early-offer");
        await conn.setRemoteDescription(data.description);
        conn.getTransceivers().forEach((t) => { t.direction = "sendrecv"; });
        await attach(conn);
        await conn.setLocalDescription(await conn.createAnswer());
        send({ type: "signal", data: { description: { type: conn.localDescription.type, sdp: conn.localDescription.sdp }, nid: conn.nid } });
      } else if (current()) {
        await pc.setRemoteDescription(data.description);
      } else {
        note("stale-answer"); return;
      }
      const queued = pendingCandidates; pendingCandidates = [];
      for (const c of queued) { try { await pc.addIceCandidate(c); } catch (e) { /* stale */ } }
    } else if (data.candidate) {
      if (!current()) return;  // of a replaced connection
      if (pc.remoteDescription) { try { await pc.addIceCandidate(data.candidate); } catch (e) { /* stale */ } }
      else pendingCandidates.push(data.candidate);
    }
  }

  function send(obj) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj)); }

  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const sock = new WebSocket(`${proto}://${location.host}/video/ws/${appt}`);
    ws = sock;
    sock.onopen = () => { wsRetry = 0; mark("ws-open"); };
    // Messages are handled one after the other: an offer never overtakes the greeting.
    sock.onmessage = (ev) => {
      if (ws !== sock) return;
      const m = JSON.parse(ev.data);
      inbox = inbox.then(() => onMessage(m)).catch((e) => say(String(e)));
    };
    sock.onclose = (ev) => {
      if (ws !== sock || ended || ev.code === 4000) return;
      say(T.reconnecting);
      wsRetry = Math.min(wsRetry + 1, 5);
      setTimeout(connect, 500 * wsRetry);
    };
  }

  // The doctor's dashboard (lobby mode): hold the socket of the patient who waits first, with
  // camera and ICE servers ready and the peer connection prepared (no media), so that
  // admitting only attaches the tracks; the call then opens in the page itself.
  const lobbyMode = app.dataset.lobby === "1";
  let admittedHere = !lobbyMode;
  function watch(id) {
    if (appt === id && ws) return;
    const old = ws; ws = null;
    if (old) old.close();
    if (pc) { pc.close(); pc = null; }
    peerPresent = false;
    appt = id; app.dataset.appointment = id || "";
    if (id) connect();
  }
  if (lobbyMode) {
    kv.prewarm = (id) => {
      if (admittedHere) return;
      watch(id);
      if (id) { media().catch(() => { /* said when the call starts */ }); ice().catch(() => { /* idem */ }); }
    };
    kv.admit = async (id, name) => {
      admittedHere = true;
      watch(id);
      const sent = fetch(`/video/appointments/${id}/admit`, { method: "POST",
        headers: { "X-CSRF-Token": csrf, Accept: "application/json" }, credentials: "same-origin" });
      app.dataset.after = `/video/appointments/${id}/after`;
      $("after-link").href = app.dataset.after;
      $("call-name").textContent = name;
      history.pushState(null, "", `/video/call/${id}`);
      window.addEventListener("popstate", () => location.reload());
      $("home").hidden = true; app.hidden = false;
      showCall(); say(T.connecting);
      const r = await sent;
      if (!r.ok) throw new Error("admit " + r.status);
    };
  }

  function finish(text) {
    ended = true; inCall = false;
    if (pc) { pc.close(); pc = null; }
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    if (screenTrack) screenTrack.stop();
    say(text);
    if (ws) ws.close();
    if (role === "doctor" && app.dataset.after) setTimeout(() => { location.href = app.dataset.after; }, 800);
    if (role === "patient") setTimeout(() => location.reload(), 1500);
  }

  // The call is this page's: the patient's, or the doctor's once admitted from this page.
  const mine = () => role === "patient" || admittedHere;

  async function onMessage(m) {
    note("ws-" + m.type + (m.status ? ":" + m.status : "") + (m.present !== undefined ? ":" + m.present : ""));
    // Pre-warmed on the dashboard, not admitted from here: greeting and connection set-up only.
    if (!mine() && !["hello", "peer", "signal", "restart"].includes(m.type)) return;
    switch (m.type) {
      case "hello":
        mark("hello"); hellos += 1;
        (m.messages || []).forEach(addChat);
        $("file-list").replaceChildren(); (m.files || []).forEach(addFile);
        if (m.status === "admitted" && mine()) admitted = true;
        if ((role === "doctor" && admittedHere) || admitted) {
          await media(); await ice(); showCall();
          if (role === "patient") say(T.connecting);
        } else if (role === "doctor") { await media(); await ice(); }
        break;
      case "peer":
        peerPresent = !!m.present;
        if (!m.present) { if (mine()) say(T.peerLeft); break; }
        if (m.admitted === false) {  // both here, not admitted: connect without media
          if (role === "doctor") await offer();
          break;
        }
        if (!mine()) break;  // admitted from elsewhere: not this dashboard's call
        admitted = true;
        showCall(); if (role === "doctor") await offer();
        break;
      case "status":
        if (m.status === "admitted") {
          mark("admitted"); admitted = true; checkStop = true;
          if (role === "patient") say(T.admitted);
          await media(); await ice(); showCall();
          if (usable(pc)) await attach(pc); else if (role === "doctor" && peerPresent) await offer();
        }
        else if (m.status === "postponed") { const w = $("waiting-text"); if (w) w.textContent = T.postponed; }
        else if (m.status === "ended") finish(T.ended);
        else if (m.status === "cancelled") finish(T.cancelled);
        break;
      case "signal": await onSignal(m.data); break;
      case "restart": if (role === "doctor") await offer(); break;
      case "check":  // the server stopped a check that did not finish
        if (m.status === "timed_out" && $("check-error") && !inCall) {
          $("check-error").textContent = C.timedOut; $("check-error").hidden = false;
          $("check-retry").hidden = false;
        }
        break;
      case "chat": addChat(m.message); break;
      case "file": addFile(m.file); break;
      default: break;
    }
  }

  // ------------------------------------------------------------- chat and files

  function who(sender) { return sender === role ? T.you : (sender === "doctor" ? T.doctor : T.patient); }

  function addChat(msg) {
    const li = document.createElement("li");
    li.className = msg.sender === role ? "mine" : "theirs";
    const b = document.createElement("strong"); b.textContent = who(msg.sender) + ": ";
    const t = document.createElement("span"); t.textContent = msg.text;
    li.append(b, t);
    $("chat-log").append(li);
  }

  function addFile(f) {
    if (document.querySelector(`[data-file-id="${f.id}"]`)) return;
    const li = document.createElement("li"); li.dataset.fileId = f.id;
    const a = document.createElement("a"); a.href = `/video/files/${appt}/${f.id}`; a.textContent = f.name;
    const s = document.createElement("span"); s.className = "muted small";
    s.textContent = ` (${who(f.sender)}, ${(f.size / 1024).toFixed(1)} KiB)`;
    li.append(a, s);
    $("file-list").append(li);
  }

  function wireControls() {
    $("chat-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("chat-text");
      if (input.value.trim()) send({ type: "chat", text: input.value });
      input.value = "";
    });
    $("file-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const input = $("file-input");
      if (!input.files.length) return;
      const fd = new FormData(); fd.append("file", input.files[0]);
      const r = await fetch(`/video/api/${appt}/files`, { method: "POST", body: fd,
        headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" });
      if (r.ok) { $("file-status").textContent = T.uploaded; addFile(await r.json()); input.value = ""; }
      else {
        // a refusal says why in the page's language (``shown``); anything else, as it came
        const problem = (r.headers.get("Content-Type") || "").includes("json")
          ? await r.json().catch(() => ({})) : null;
        const text = problem ? String(problem.shown || problem.detail || r.status)
          : (await r.text()).replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim();
        $("file-status").textContent = `${T.uploadFailed} ${text.slice(0, 200)}`;
      }
    });
    const toggle = (btn, pressed) => {
      btn.setAttribute("aria-pressed", String(pressed));
      btn.textContent = pressed ? btn.dataset.on : btn.dataset.off;
    };
    $("btn-mute").addEventListener("click", (e) => {
      const on = e.currentTarget.getAttribute("aria-pressed") !== "true";
      localStream && localStream.getAudioTracks().forEach((t) => { t.enabled = !on; });
      toggle(e.currentTarget, on);
    });
    $("btn-camera").addEventListener("click", (e) => {
      const on = e.currentTarget.getAttribute("aria-pressed") !== "true";
      localStream && localStream.getVideoTracks().forEach((t) => { t.enabled = !on; });
      toggle(e.currentTarget, on);
    });
    const share = $("btn-share");
    if (share) share.addEventListener("click", async (e) => {
      const btn = e.currentTarget;
      const sender = pc && pc.getSenders().find((x) => x.track && x.track.kind === "video");
      if (screenTrack) {
        screenTrack.stop(); screenTrack = null;
        toggle(btn, false);
        if (sender) await sender.replaceTrack(localStream.getVideoTracks()[0]);
        return;
      }
      try {
        const display = await navigator.mediaDevices.getDisplayMedia({ video: true });
        screenTrack = display.getVideoTracks()[0];
        if (sender) await sender.replaceTrack(screenTrack);
        screenTrack.addEventListener("ended", async () => {
          screenTrack = null; toggle(btn, false);
          const snd = pc && pc.getSenders().find((x) => x.track && x.track.kind === "video");
          if (snd) await snd.replaceTrack(localStream.getVideoTracks()[0]);
        });
        toggle(btn, true);
      } catch (err) { /* the doctor cancelled the picker */ }
    });
    $("btn-hangup").addEventListener("click", () => { send({ type: "hangup" }); });
  }

  mark("page");
  wireControls();
  if (lobbyMode) {
    // the waiting room (lobby.js) says whom to pre-warm
  } else if (role === "doctor") {
    connect();
  } else if (app.dataset.status === "admitted") {
    connect();
  } else {
    $("check-retry").addEventListener("click", () => { runCheck(); });
    if (app.dataset.status === "entry") wireEntry();
    else runCheck();
  }
})();
