// The cloud's side of the contract, with the cloud's own gRPC stack.
// Usage: node cloud.mjs ADDRESS PROTO_PATH [contract|refusals|hold|rejoin]
//   contract (default): every call of the contract  (env USER_ID, ROOM, JOIN_TOKEN, LIVEKIT_URL, AUDIO_URL)
//   refusals: a join, then JoinRoom with each of BAD_TOKENS (a JSON object: case -> token), then GetStatus
//             (env USER_ID, ROOM, JOIN_TOKEN, LIVEKIT_URL, BAD_TOKENS)
//   hold: JoinRoom for every one of USERS (a JSON list of {user_id, room, token}) at once, then a StreamAudio
//         each, printing a JSON line {user, counter} per chunk (the counter: the PCM's first 8 bytes) and
//         {ready: true} once every stream has brought one; runs until killed, as a cloud that dies
//   rejoin: as a cloud that came back: JoinRoom for every one of USERS at once, a StreamAudio each, until
//           WANT chunks each; prints {joins, received: {user: [counters]}, first_chunk_ms: {user: ms}}
// Prints one JSON object with what each call returned (hold: JSON lines), for tests/test_node_cloud.py.
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const [address, protoPath, scenario = "contract"] = process.argv.slice(2);
const { USER_ID: userId, ROOM: room, JOIN_TOKEN: token, LIVEKIT_URL: livekitUrl, AUDIO_URL: audioUrl,
        BAD_TOKENS: badTokens } = process.env;

const definition = protoLoader.loadSync(protoPath, { keepCase: true, longs: Number, enums: String, defaults: true });
const { LiveKitBridge } = grpc.loadPackageDefinition(definition).mentra.livekit.bridge;
const target = address.startsWith("unix:") ? address : `dns:${address}`;
const client = new LiveKitBridge(target, grpc.credentials.createInsecure());

const unary = (method, request) =>
  new Promise((resolve) => {
    client[method](request, { deadline: Date.now() + 30_000 }, (error, reply) =>
      resolve(error ? { code: grpc.status[error.code], details: error.details } : reply));
  });

// Runs a StreamAudio call: sends `chunks`, collects up to `want` replies, returns how it ended.
const streamAudio = (chunks, want) =>
  new Promise((resolve) => {
    const call = client.StreamAudio({ deadline: Date.now() + 30_000 });
    const received = [];
    let settled = false;
    const finish = (code, details) => {
      if (settled) return;
      settled = true;
      resolve({ code, details, received });
    };
    call.on("data", (chunk) => {
      received.push({ bytes: chunk.pcm_data.length, sample_rate: chunk.sample_rate, user_id: chunk.user_id });
      if (want && received.length >= want) {
        call.cancel();
        finish("RECEIVED", "");
      }
    });
    call.on("error", (error) => finish(grpc.status[error.code], error.details));
    call.on("status", (status) => finish(grpc.status[status.code], status.details));
    for (const chunk of chunks) call.write(chunk);
  });

// Runs a PlayAudio call to its end: the events it streamed, and its status.
const playAudio = (request) =>
  new Promise((resolve) => {
    const call = client.PlayAudio(request, { deadline: Date.now() + 30_000 });
    const events = [];
    call.on("data", (event) => events.push({ type: event.type, duration_ms: event.duration_ms, error: event.error,
                                             metadata: event.metadata }));
    call.on("error", (error) => resolve({ code: grpc.status[error.code], details: error.details, events }));
    call.on("status", (status) => resolve({ code: grpc.status[status.code], details: status.details, events }));
  });

const join = (joinToken) =>
  unary("JoinRoom", { user_id: userId, room_name: room, token: joinToken, livekit_url: livekitUrl,
                      target_identity: userId });

// One StreamAudio per user, calling onChunk(user, counter) for each chunk it brings.
const streamEach = (users, onChunk) =>
  users.map(({ user_id }) => {
    const call = client.StreamAudio();
    call.on("data", (chunk) => onChunk(user_id, Number(chunk.pcm_data.readBigUInt64LE(0))));
    call.on("error", () => {});
    call.write({ user_id });
    return call;
  });

const joinAll = (users) =>
  Promise.all(users.map(({ user_id, room: userRoom, token: userToken }) =>
    unary("JoinRoom", { user_id, room_name: userRoom, token: userToken, livekit_url: livekitUrl,
                        target_identity: user_id })));

if (scenario === "hold" || scenario === "rejoin") {
  const users = JSON.parse(process.env.USERS);
  const started = Date.now();
  const joins = await joinAll(users);
  const received = Object.fromEntries(users.map(({ user_id }) => [user_id, []]));
  const firstChunkMs = {};
  const want = Number(process.env.WANT || 0);
  await new Promise((resolve) => {
    const calls = streamEach(users, (user, counter) => {
      const first = !(user in firstChunkMs);
      if (first) firstChunkMs[user] = Date.now() - started;
      if (scenario === "hold") {
        console.log(JSON.stringify({ user, counter }));
        if (first && Object.keys(firstChunkMs).length === users.length) console.log(JSON.stringify({ ready: true }));
        return;
      }
      received[user].push(counter);
      if (Object.values(received).every((counters) => counters.length >= want)) {
        for (const call of calls) call.cancel();
        resolve();
      }
    });
  });
  console.log(JSON.stringify({ joins, received, first_chunk_ms: firstChunkMs }));
  client.close();
  process.exit(0);
}

const result = {};
if (scenario === "refusals") {
  result.join = await join(token);
  result.refused = {};
  for (const [name, badToken] of Object.entries(JSON.parse(badTokens))) result.refused[name] = await join(badToken);
  result.status = await unary("GetStatus", { user_id: userId });
  client.close();
  console.log(JSON.stringify(result));
  process.exit(0);
}
result.health = await unary("HealthCheck", {});
result.join = await join(token);
result.no_user_stream = await streamAudio([{ user_id: "" }], 0);
result.unknown_user_stream = await streamAudio([{ user_id: "nobody-" + userId }], 0);
result.audio_stream = await streamAudio([{ user_id: userId }], 5);
result.bad_chunk_stream = await streamAudio(
  [{ user_id: userId }, { user_id: userId, pcm_data: Buffer.alloc(640), sample_rate: 12345, channels: 1 }], 0);
result.play = await playAudio({ request_id: "node-play", audio_url: audioUrl, user_id: userId, track_id: 2 });
result.play_bad_url = await playAudio({ request_id: "node-bad", audio_url: "ftp://127.0.0.1/a.wav", user_id: userId });
result.stop = await unary("StopAudio", { user_id: userId, track_id: -1, reason: "node test" });
result.status = await unary("GetStatus", { user_id: userId });
result.leave = await unary("LeaveRoom", { user_id: userId, reason: "node test" });
result.leave_again = await unary("LeaveRoom", { user_id: userId, reason: "node test" });
client.close();
console.log(JSON.stringify(result));
