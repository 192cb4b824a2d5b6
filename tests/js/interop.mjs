// A matrix-js-sdk client (Rust crypto) driven by tests/messaging/test_js_interop.py.
//
//   node interop.mjs --url URL --user USER --password PW [--room ROOM_ID] [--peer USER_ID]
//   (or KONSIL_MX_URL, KONSIL_MX_USER, KONSIL_MX_PASSWORD, KONSIL_MX_ROOM, KONSIL_MX_PEER)
//
// It logs in, sets up end-to-end encryption in memory, syncs, joins ROOM_ID when invited (any
// invite if no room is given) and prints one JSON object per line on stdout:
//   {"event":"ready","user_id":…,"device_id":…,"push_rules":[underride rule ids]}
//   {"event":"joined","room_id":…}
//   {"event":"trusted","user_id":…,"devices":[…]}     the peer's devices, marked verified
//   {"event":"message","room_id":…,"sender":…,"body":…,"encrypted":true|false,"notify":…}
//   {"event":"undecryptable","room_id":…,"sender":…,"code":…}
//   {"event":"sent","room_id":…,"event_id":…}
//   {"event":"cross_signing","ready":…,"master":…,"password_asked":…,"device_cross_signed":…}
//   {"event":"backup","version":…}                   a new key backup, enabled: its keys upload
//   {"event":"restored","total":…,"imported":…}      keys read back from the server's backup
//   {"event":"error","message":…}
// Commands, one JSON object per line on stdin:
//   {"cmd":"trust","user_id":…}          download USER_ID's devices and mark them all verified
//   {"cmd":"send","room_id":…,"body":…}  send an m.text (encrypted when the room is)
//   {"cmd":"bootstrap","reset":false}    set up cross-signing (reset: new keys even if some
//                                        exist); the password is given only if the server asks
//   {"cmd":"backup"}                     create a key backup (resetKeyBackup) and enable it
//   {"cmd":"restore"}                    download and decrypt the backup's keys
//   {"cmd":"stop"}
// The SDK's own logging goes to stderr, so stdout holds only these lines.
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

for (const name of ["log", "info", "debug", "trace"]) {
  console[name] = (...args) => console.error(...args);
}

const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
logger.setLevel(process.env.KONSIL_MX_LOGLEVEL ?? "warn");

const { values: opts } = parseArgs({
  options: {
    url: { type: "string", default: process.env.KONSIL_MX_URL },
    user: { type: "string", default: process.env.KONSIL_MX_USER },
    password: { type: "string", default: process.env.KONSIL_MX_PASSWORD },
    room: { type: "string", default: process.env.KONSIL_MX_ROOM },
    peer: { type: "string", default: process.env.KONSIL_MX_PEER },
  },
});
for (const required of ["url", "user", "password"]) {
  if (!opts[required]) {
    console.error(`missing --${required}`);
    process.exit(2);
  }
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function trust(client, userId) {
  // The crypto store learns a user's devices once it tracks them (after the room's membership
  // has come down /sync and the key query that follows): until then, wait for the next sync.
  const crypto = client.getCrypto();
  for (let attempt = 0; ; attempt++) {
    const map = await crypto.getUserDeviceInfo([userId], true);
    const devices = [...(map.get(userId)?.keys() ?? [])];
    try {
      for (const deviceId of devices) {
        await crypto.setDeviceVerified(userId, deviceId, true);
      }
      if (devices.length) {
        emit({ event: "trusted", user_id: userId, devices });
        return;
      }
    } catch (err) {
      if (attempt >= 50) throw err;
    }
    await new Promise((resolve) => client.once(sdk.ClientEvent.Sync, resolve));
  }
}

// /keys/query requests in flight, and when the last one ended. A reset of cross-signing first
// waits for a quiet moment: an answer to a query sent before the reset (the old keys) would
// make the SDK drop the new private keys it just made.
let keyQueries = 0;
let lastKeyQuery = 0;
async function fetchFn(url, init) {
  const isQuery = String(url).includes("/keys/query");
  if (isQuery) keyQueries += 1;
  try {
    return await fetch(url, init);
  } finally {
    if (isQuery) {
      keyQueries -= 1;
      lastKeyQuery = Date.now();
    }
  }
}

async function keyQueriesSettled() {
  for (let i = 0; i < 100 && (keyQueries > 0 || Date.now() - lastKeyQuery < 1000); i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function bootstrap(client, reset) {
  const crypto = client.getCrypto();
  if (reset) await keyQueriesSettled();
  let asked = 0;
  await crypto.bootstrapCrossSigning({
    setupNewCrossSigning: reset,
    // try without auth first (a first upload needs none), then answer the password stage
    authUploadDeviceSigningKeys: async (makeRequest) => {
      try {
        return await makeRequest(null);
      } catch (err) {
        if (err?.httpStatus !== 401 || !err.data?.flows) throw err;
        asked += 1;
        return await makeRequest({
          type: "m.login.password",
          identifier: { type: "m.id.user", user: opts.user },
          password: opts.password,
          session: err.data.session,
        });
      }
    },
  });
  // After a reset the SDK trusts the new keys once it has downloaded them again (the server
  // lists us in device_lists.changed): wait for that, a bounded number of syncs.
  for (let i = 0; i < 50 && !(await crypto.isCrossSigningReady()); i++) {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 500);
      client.once(sdk.ClientEvent.Sync, () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  const own = await crypto.getDeviceVerificationStatus(client.getUserId(), client.getDeviceId());
  emit({
    event: "cross_signing",
    ready: await crypto.isCrossSigningReady(),
    master: await crypto.getCrossSigningKeyId(),
    password_asked: asked,
    device_cross_signed: own?.crossSigningVerified ?? false,
  });
}

async function backup(client) {
  const crypto = client.getCrypto();
  // creates the version (auth_data signed by this device), then enables it in the background;
  // the SDK's backup loop then uploads the room keys it holds
  await crypto.resetKeyBackup();
  let version = null;
  for (let i = 0; i < 100 && !(version = await crypto.getActiveSessionBackupVersion()); i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  emit({ event: "backup", version });
}

async function restore(client) {
  const { total, imported } = await client.getCrypto().restoreKeyBackup();
  emit({ event: "restored", total, imported });
}

const anon = sdk.createClient({ baseUrl: opts.url });
const login = await anon.loginRequest({
  type: "m.login.password",
  identifier: { type: "m.id.user", user: opts.user },
  password: opts.password,
  initial_device_display_name: "matrix-js-sdk interop",
});
anon.stopClient();

const client = sdk.createClient({
  baseUrl: opts.url,
  userId: login.user_id,
  deviceId: login.device_id,
  accessToken: login.access_token,
  fetchFn,
});
// In-memory crypto store: no IndexedDB in Node.
await client.initRustCrypto({ useIndexedDB: false });
// Share room keys with unverified devices too (the default, said explicitly): the peer's
// devices are also marked verified below, once they are known.
client.getCrypto().globalBlacklistUnverifiedDevices = false;

const joining = new Set();
async function join(roomId) {
  if (joining.has(roomId)) return;
  joining.add(roomId);
  try {
    await client.joinRoom(roomId);
    emit({ event: "joined", room_id: roomId });
    if (opts.peer) await trust(client, opts.peer);
  } catch (err) {
    joining.delete(roomId);
    emit({ event: "error", message: `join ${roomId}: ${err}` });
  }
}

client.on(sdk.RoomMemberEvent.Membership, (_event, member) => {
  if (member.userId !== login.user_id || member.membership !== "invite") return;
  if (opts.room && member.roomId !== opts.room) return;
  void join(member.roomId);
});

client.on(sdk.MatrixEventEvent.Decrypted, (event) => {
  if (event.isDecryptionFailure()) {
    emit({
      event: "undecryptable",
      room_id: event.getRoomId(),
      sender: event.getSender(),
      code: event.decryptionFailureReason,
    });
  } else if (event.getType() === "m.room.message") {
    emit({
      event: "message",
      room_id: event.getRoomId(),
      sender: event.getSender(),
      body: event.getContent().body,
      encrypted: true,
      // the SDK evaluates the push rules itself (as Element does), on the decrypted event
      notify: client.getPushActionsForEvent(event, true)?.notify ?? null,
    });
  }
});

client.on(sdk.RoomEvent.Timeline, (event, room) => {
  if (event.isEncrypted() || event.getType() !== "m.room.message") return;
  emit({
    event: "message",
    room_id: room?.roomId,
    sender: event.getSender(),
    body: event.getContent().body,
    encrypted: false,
  });
});

const prepared = new Promise((resolve, reject) => {
  client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
    if (state === "PREPARED") resolve();
    if (state === "ERROR") reject(data?.error ?? new Error("sync error"));
  });
});
await client.startClient({ initialSyncLimit: 20 });
await prepared;
emit({
  event: "ready",
  user_id: login.user_id,
  device_id: login.device_id,
  push_rules: (client.pushRules?.global?.underride ?? []).map((r) => r.rule_id),
});

// an invite that was already there at the first sync
for (const room of client.getRooms()) {
  if (room.getMyMembership() === "invite" && (!opts.room || room.roomId === opts.room)) {
    void join(room.roomId);
  }
}

async function stop(code) {
  client.stopClient();
  process.exit(code);
}

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
    if (cmd.cmd === "stop") {
      await stop(0);
    } else if (cmd.cmd === "trust") {
      await trust(client, cmd.user_id);
    } else if (cmd.cmd === "bootstrap") {
      await bootstrap(client, cmd.reset === true);
    } else if (cmd.cmd === "backup") {
      await backup(client);
    } else if (cmd.cmd === "restore") {
      await restore(client);
    } else if (cmd.cmd === "send") {
      const res = await client.sendMessage(cmd.room_id, { msgtype: "m.text", body: cmd.body });
      emit({ event: "sent", room_id: cmd.room_id, event_id: res.event_id });
    } else {
      emit({ event: "error", message: `unknown command ${cmd.cmd}` });
    }
  } catch (err) {
    emit({ event: "error", message: `${cmd?.cmd ?? "?"}: ${err}` });
  }
});
lines.on("close", () => void stop(0));
