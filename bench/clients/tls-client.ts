/**
 * The fallback TLS load generator, for when bench/loadgen.c could not be
 * built with OpenSSL: a Node process, run pinned to its own CPU like
 * loadgen, printing the same RESULT line. It spends about as much CPU per
 * message or handshake as the server does, so it saturates first more often
 * than loadgen -t; the report's load generator check says when.
 *
 *   node tls-client.js --mode pingpong|bulk|handshake --port N [options]
 *
 *   pingpong   --conns C connections, one --size byte line in flight each
 *   bulk       --conns C connections stream --block byte writes, at most
 *              --window bytes unechoed per connection; MB/s echoed back
 *   handshake  --conns C at once, each: connect, TLS handshake, close, again
 *
 * Certificates are not verified (the server's is a throwaway). Sessions are
 * never resumed: every handshake is a full one. Source addresses rotate over
 * 127.0.0.1..32 so closed connections in TIME_WAIT never exhaust the ports.
 */
import tls from "node:tls";
import { parseArgs } from "node:util";
import { cpuSeconds } from "../lib/proc.js";

const { values } = parseArgs({
  options: {
    mode: { type: "string", default: "pingpong" },
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string" },
    conns: { type: "string", default: "50" },
    size: { type: "string", default: "64" },
    block: { type: "string", default: "65536" },
    window: { type: "string", default: "262144" },
    duration: { type: "string", default: "5" },
    warmup: { type: "string", default: "1" },
    "server-pid": { type: "string", default: "0" },
  },
  strict: true,
});

function numberOption(name: keyof typeof values, min: number): number {
  const n = Number(values[name]);
  if (!Number.isFinite(n) || n < min) {
    process.stderr.write(`tls-client: --${name} wants a number >= ${min}, got ${String(values[name])}\n`);
    process.exit(1);
  }
  return n;
}

const mode = values.mode;
if (mode !== "pingpong" && mode !== "bulk" && mode !== "handshake") {
  process.stderr.write(`tls-client: unknown --mode ${String(mode)}\n`);
  process.exit(1);
}
const host = values.host!;
if (!/^127\./.test(host) && host !== "::1") {
  process.stderr.write(`tls-client: refusing a non-loopback target ${host}\n`);
  process.exit(1);
}
const port = numberOption("port", 1);
const conns = numberOption("conns", 1);
const size = numberOption("size", 2);
const blockSize = numberOption("block", 1);
const window = numberOption("window", 1);
const duration = numberOption("duration", 0.01);
const warmup = numberOption("warmup", 0);
const serverPid = numberOption("server-pid", 0);

// A hard deadline, as loadgen's alarm().
setTimeout(() => {
  process.stderr.write("tls-client: timed out\n");
  process.exit(3);
}, (warmup + duration + 30) * 1000).unref();

// ----------------------------------------------------------------- counters

let measuring = false;
let completed = 0; // messages, or handshakes
let echoedBytes = 0;
let errors = 0;
let completedAny = false;
const latenciesNs: number[] = [];

let sourceIndex = 0;
/** tls.connect passes socket options such as localAddress on to the TCP connect. */
type ConnectOptions = tls.ConnectionOptions & { localAddress?: string };

function connectOptions(): ConnectOptions {
  const options: ConnectOptions = { host, port, rejectUnauthorized: false };
  if (host.startsWith("127.")) options.localAddress = `127.0.0.${1 + (sourceIndex++ % 32)}`;
  return options;
}

function quantileUs(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return 0;
  // Nearest rank: the ceil(q*N)-th smallest.
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]! / 1000;
}

// --------------------------------------------------------------------- modes

const line = Buffer.alloc(size, "x");
line[size - 1] = 0x0a;

function pingpong(): void {
  const socket = tls.connect(connectOptions());
  socket.setNoDelay(true);
  let sentAt = 0n;
  let received = 0;
  const send = () => {
    received = 0;
    sentAt = process.hrtime.bigint();
    socket.write(line);
  };
  socket.on("secureConnect", send);
  socket.on("data", (chunk: Buffer) => {
    received += chunk.length;
    if (received < size) return;
    if (received > size || chunk[chunk.length - 1] !== 0x0a) {
      errors++;
      socket.destroy();
      return;
    }
    completedAny = true;
    if (measuring) {
      completed++;
      latenciesNs.push(Number(process.hrtime.bigint() - sentAt));
    }
    send();
  });
  socket.on("error", () => {});
  socket.on("close", () => {
    errors++;
    setTimeout(pingpong, 10); // replace the broken connection
  });
}

function bulk(): void {
  const block = Buffer.alloc(blockSize, "y");
  const socket = tls.connect(connectOptions());
  let sent = 0;
  let echoed = 0;
  let blocked = false;
  const pump = () => {
    while (!blocked && sent - echoed < window) {
      const len = Math.min(blockSize, window - (sent - echoed));
      sent += len;
      if (!socket.write(len === blockSize ? block : block.subarray(0, len))) blocked = true;
    }
  };
  socket.on("secureConnect", pump);
  socket.on("drain", () => {
    blocked = false;
    pump();
  });
  socket.on("data", (chunk: Buffer) => {
    echoed += chunk.length;
    completedAny = true;
    if (measuring) echoedBytes += chunk.length;
    pump();
  });
  socket.on("error", () => {});
  socket.on("close", () => errors++);
}

function handshakeLoop(): void {
  const started = process.hrtime.bigint();
  const socket = tls.connect(connectOptions());
  let done = false;
  socket.on("secureConnect", () => {
    done = true;
    completedAny = true;
    if (measuring) {
      completed++;
      latenciesNs.push(Number(process.hrtime.bigint() - started));
    }
    socket.end();
  });
  socket.on("error", () => {});
  socket.on("close", () => {
    if (!done) errors++;
    setImmediate(handshakeLoop);
  });
}

const start = mode === "pingpong" ? pingpong : mode === "bulk" ? bulk : handshakeLoop;
for (let i = 0; i < conns; i++) start();

// ----------------------------------------------------------------- the window

let serverCpu0: number | null = null;
let selfCpu0 = 0;
let window0 = 0;

setTimeout(() => {
  measuring = true;
  completed = 0;
  echoedBytes = 0;
  errors = 0;
  latenciesNs.length = 0;
  serverCpu0 = serverPid > 0 ? cpuSeconds(serverPid) : null;
  const usage = process.cpuUsage();
  selfCpu0 = (usage.user + usage.system) / 1e6;
  window0 = performance.now();
  setTimeout(finish, duration * 1000);
}, warmup * 1000);

function finish(): void {
  const secs = (performance.now() - window0) / 1000;
  const usage = process.cpuUsage();
  const cliCpu = (100 * ((usage.user + usage.system) / 1e6 - selfCpu0)) / secs;
  const serverCpu1 = serverPid > 0 ? cpuSeconds(serverPid) : null;
  const srvCpu = serverCpu0 !== null && serverCpu1 !== null ? (100 * (serverCpu1 - serverCpu0)) / secs : -1;
  const sorted = Float64Array.from(latenciesNs).sort();
  const fields: Record<string, string | number> = {
    mode,
    conns,
    secs: secs.toFixed(3),
    count: completed,
    rate: (completed / secs).toFixed(1),
  };
  if (mode === "bulk") {
    fields["bytes"] = echoedBytes;
    fields["mbps"] = (echoedBytes / secs / 1e6).toFixed(1);
  } else {
    fields["p50_us"] = quantileUs(sorted, 0.5).toFixed(1);
    fields["p99_us"] = quantileUs(sorted, 0.99).toFixed(1);
  }
  fields["errors"] = errors;
  fields["srv_cpu"] = srvCpu.toFixed(1);
  fields["cli_cpu"] = cliCpu.toFixed(1);
  fields["cli_total_s"] = ((usage.user + usage.system) / 1e6).toFixed(3);
  const text = Object.entries(fields)
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
  process.stdout.write(`RESULT ${text}\n`, () => process.exit(completedAny ? 0 : 2));
}
