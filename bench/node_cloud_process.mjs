// The cloud in a process of its own, on the cloud's own gRPC stack (@grpc/grpc-js and
// @grpc/proto-loader, installed in tests/node_cloud/node_modules by `just setup`): every
// user's JoinRoom and StreamAudio on one channel, as the deployed cloud holds them.
//
// Usage: node bench/node_cloud_process.mjs HOST:PORT|unix:PATH
//        (env LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET)
// Commands, one JSON line each on stdin, answered by one JSON line (as bench/cloud_process.py):
//   {"op": "join", "users": [...]}     all at once; each user's StreamAudio opens when its join answers
//   {"op": "replace", "users": [...]}  JoinRoom again, one user after the other
//   {"op": "leave", "users": [...]}    one after the other
//   {"op": "counters"}                 the bridge's session counters, summed (DescribeActors)
//   {"op": "arrivals"}                 the stamped packets received since the last time
//   {"op": "talk", "on": true|false}   every open StreamAudio sends the cloud's audio back: 100 ms of
//                                      16 kHz PCM16 every 100 ms (the memory rung, bench/memory.py)
// A packet's arrival is read in the stream's "data" callback, where the cloud's code gets it,
// on CLOCK_MONOTONIC (process.hrtime), the clock of the phones' stamps (bench/stamps.py).
import { createRequire } from "node:module";
import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(root, "tests", "node_cloud", "package.json"));
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address] = process.argv.slice(2);
const { LIVEKIT_URL: livekitUrl, LIVEKIT_API_KEY: apiKey, LIVEKIT_API_SECRET: apiSecret } = process.env;
const options = { keepCase: true, longs: Number, enums: String, defaults: true };
const definition = protoLoader.loadSync(
  [path.join(root, "proto", "livekit_bridge.proto"), path.join(root, "proto", "bridge_debug.proto")], options);
const loaded = grpc.loadPackageDefinition(definition);
const target = address.startsWith("unix:") ? address : `dns:${address}`;
const client = new loaded.mentra.livekit.bridge.LiveKitBridge(target, grpc.credentials.createInsecure());
// The debug service on the same channel: one HTTP/2 connection for everything.
const debug = new loaded.mentra.livekit.bridge.debug.BridgeDebug(target, grpc.credentials.createInsecure(),
                                                                  { channelOverride: client.getChannel() });

const base64url = (text) => Buffer.from(text).toString("base64url");

// A LiveKit token for the bridge's identity in the user's room (HS256, as livekit-server-sdk signs it).
function joinToken(user) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { video: { roomJoin: true, room: `room-${user}`, canPublish: true, canSubscribe: true,
                            canPublishData: true },
                   sub: `cloud-agent:${user}`, iss: apiKey, nbf: now, exp: now + 6 * 3600 };
  const unsigned = `${base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${base64url(JSON.stringify(claims))}`;
  return `${unsigned}.${createHmac("sha256", apiSecret).update(unsigned).digest("base64url")}`;
}

const unary = (stub, method, request) =>
  new Promise((resolve, reject) => {
    stub[method](request, { deadline: Date.now() + 120_000 }, (error, reply) => (error ? reject(error) : resolve(reply)));
  });

let arrivals = {};
const streams = new Map();
let talking = null;
const talkChunk = Buffer.alloc(3200);

function openStream(user) {
  streams.get(user)?.cancel();
  const call = client.StreamAudio();
  call.on("data", (chunk) => {
    const received = Number(process.hrtime.bigint());
    const pcm = chunk.pcm_data;
    if (pcm.length < 12) return;
    (arrivals[user] ??= []).push([Number(pcm.readBigInt64LE(0)), received, pcm.readUInt16LE(10)]);
  });
  call.on("error", (error) => {
    if (error.code !== grpc.status.CANCELLED) process.stderr.write(`stream of ${user} ended: ${error.message}\n`);
  });
  call.write({ user_id: user });
  streams.set(user, call);
}

async function joinOne(user) {
  const started = performance.now();
  try {
    const answer = await unary(client, "JoinRoom", { user_id: user, room_name: `room-${user}`, token: joinToken(user),
                                                     livekit_url: livekitUrl, target_identity: user });
    const took = performance.now() - started;
    if (!answer.success) return [took, answer.error || "failed"];
    openStream(user);  // as the cloud does: a new StreamAudio for each JoinRoom
    return [took, ""];
  } catch (error) {
    return [performance.now() - started, `${grpc.status[error.code]}: ${error.details}`];
  }
}

function* walk(nodes) {
  for (const node of nodes) {
    yield node;
    yield* walk(node.children ?? []);
  }
}

const commands = {
  async join({ users }) {
    const started = performance.now();
    const results = await Promise.all(users.map(joinOne));
    const failed = {};
    users.forEach((user, index) => { if (results[index][1]) failed[user] = results[index][1]; });
    return { all_ms: performance.now() - started, ms: results.map(([took]) => took), failed };
  },
  async replace({ users }) {
    const results = [];
    for (const user of users) results.push(await joinOne(user));
    return { ms: results.map(([took]) => took), failed: results.map(([, error]) => error).filter(Boolean) };
  },
  async leave({ users }) {
    const took = [];
    for (const user of users) {
      const started = performance.now();
      await unary(client, "LeaveRoom", { user_id: user, reason: "bench" });
      took.push(performance.now() - started);
      streams.get(user)?.cancel();
      streams.delete(user);
    }
    return { ms: took };
  },
  async counters() {
    const tree = JSON.parse((await unary(debug, "DescribeActors", {})).tree_json);
    const sums = {};
    for (const node of walk(tree.children)) {
      if (!node.name.startsWith("session:")) continue;
      for (const [key, value] of Object.entries(node.counters)) sums[key] = (sums[key] ?? 0) + value;
    }
    return sums;
  },
  async talk({ on }) {
    clearInterval(talking);
    talking = on ? setInterval(() => {
      for (const [user, call] of streams) call.write({ user_id: user, pcm_data: talkChunk, sample_rate: 16000,
                                                       channels: 1 });
    }, 100) : null;
    return { talking: on ? streams.size : 0 };
  },
  async arrivals() {
    const taken = arrivals;
    arrivals = {};
    return taken;
  },
};

console.log(JSON.stringify({ ready: true }));
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const command = JSON.parse(line);
  if (command.op === "quit") break;
  let answer;
  try {
    answer = await commands[command.op](command);
  } catch (error) {
    answer = { error: `${error.name}: ${error.message}` };
  }
  console.log(JSON.stringify(answer));
}
clearInterval(talking);
for (const call of streams.values()) call.cancel();
client.close();
process.exit(0);
