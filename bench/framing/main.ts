/**
 * One framing micro-benchmark measurement, in a fresh process:
 *
 *   node framing/main.js --case NAME --side raw|pants [--secs S] [--warmup S]
 *
 * Both sides read from the same in-memory connection (pants-ts/testing's
 * duplexPair), fed in chunks of just under 64 KiB as TCP reads would
 * arrive (a prime size, so they end mid-frame, as reads do): the pants-ts
 * side through a `Stream` over it, the raw side through a hand-written framer
 * on its "data" events. Prints "RESULT case=.. side=.. mbps=.. fps=.. ...".
 */
import { parseArgs } from "node:util";
import { duplexPair } from "pants-ts/testing";
import { CASES } from "./cases.js";
import type { Sink } from "./cases.js";

/** The largest prime below 64 KiB: no frame size divides it, so chunks cut frames as TCP reads do. */
const CHUNK = 65_521;
const ROUND_TIMEOUT_MS = 10_000;

const { values } = parseArgs({
  options: {
    case: { type: "string" },
    side: { type: "string" },
    secs: { type: "string", default: "1" },
    warmup: { type: "string", default: "0.2" },
  },
  strict: true,
});

function fail(message: string): never {
  process.stderr.write(`framing: ${message}\n`);
  process.exit(1);
}

const spec = CASES.find((c) => c.name === values.case) ?? fail(`unknown --case ${String(values.case)} (${CASES.map((c) => c.name).join(", ")})`);
const side = values.side === "raw" || values.side === "pants" ? values.side : fail("--side must be raw or pants");
const secs = Number(values.secs);
const warmupSecs = Number(values.warmup);
if (!(secs > 0) || !(warmupSecs >= 0)) fail("--secs must be positive and --warmup not negative");

const immediate = () => new Promise<void>((resolve) => setImmediate(resolve));

const { data, frames: framesPerRound } = spec.input();
const chunks: Buffer[] = [];
for (let offset = 0; offset < data.length; offset += CHUNK) chunks.push(data.subarray(offset, offset + CHUNK));

const sink: Sink = { frames: 0, check: 0 };
const [local, peer] = duplexPair();
if (side === "pants") {
  const ConnectionClass = spec.pants(sink);
  await new ConnectionClass({ socket: local }).ready();
} else {
  local.on("data", spec.raw(sink));
}

/** Sends one round and waits until every frame of it has been delivered. */
async function round(): Promise<void> {
  const target = sink.frames + framesPerRound;
  for (const chunk of chunks) peer.write(chunk);
  const deadline = performance.now() + ROUND_TIMEOUT_MS;
  while (sink.frames < target) {
    if (performance.now() > deadline) fail(`round not framed: ${sink.frames} of ${target} frames`);
    await immediate();
  }
  if (sink.frames !== target) fail(`framed ${sink.frames} frames, expected ${target}`);
}

async function timed(seconds: number): Promise<{ rounds: number; elapsed: number }> {
  const started = performance.now();
  let rounds = 0;
  do {
    await round();
    rounds++;
  } while (performance.now() - started < seconds * 1000);
  return { rounds, elapsed: (performance.now() - started) / 1000 };
}

await timed(warmupSecs);
const checkBefore = sink.check;
const { rounds, elapsed } = await timed(secs);
const bytes = rounds * data.length;
const usage = process.cpuUsage();
const fields = [
  `case=${spec.name}`,
  `side=${side}`,
  `mbps=${(bytes / elapsed / 1e6).toFixed(1)}`,
  `fps=${((rounds * framesPerRound) / elapsed).toFixed(0)}`,
  `frames=${rounds * framesPerRound}`,
  `bytes=${bytes}`,
  `secs=${elapsed.toFixed(3)}`,
  // Per round, the same on both sides when both framed the same contents.
  `check=${(sink.check - checkBefore) / rounds}`,
  `cli_total_s=${((usage.user + usage.system) / 1e6).toFixed(3)}`,
];
process.stdout.write(`RESULT ${fields.join(" ")}\n`, () => process.exit(0));
