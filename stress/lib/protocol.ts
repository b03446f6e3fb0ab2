/**
 * What the stress orchestrator (run.ts), the server child (server.ts) and
 * the load child (load.ts) say to each other over their IPC channels, and
 * the framing choices both sides must agree on.
 */

/** Every framing mode the framed echo server can use (see server.ts). */
export const FRAMINGS = ["lf", "crlf2", "int", "regex", "regex-anchored", "struct", "netstruct", "decoder"] as const;
export type Framing = (typeof FRAMINGS)[number];

/** The fixed frame size of the `int` framing. */
export const INT_FRAME = 8;
/** The `struct` framing's header: a u16 tag and a signed 32-bit body length. */
export const STRUCT_HEADER = "!Hi";
/** The `netstruct` framing: a u16 tag and a signed-32-bit-length-prefixed string. */
export const NETSTRUCT_FORMAT = "!Hi$";
/** The application limit the `struct` connection class enforces on body lengths. */
export const STRUCT_MAX_BODY = 4096;
/** The anchored regex of the `regex-anchored` framing (`regexSearch = false`). */
export const ANCHORED_RE_SOURCE = "([a-z]+)=(\\d+);";

/** The connection classes of server.ts. */
export type Scenario = "echo" | "framed" | "big" | "faulty" | "lent" | "ending" | "relay";

/** How the server child is configured (passed as `--options JSON`). */
export interface ServerConfig {
  /** For "framed": the framing; "echo" always frames by "\n". */
  framing?: Framing;
  /** The connections' bufferSize (default: the library's). */
  bufferSize?: number;
  /** "utf8": onRead gets strings (invalid UTF-8 is a read error). */
  encoding?: "utf8";
  /** With "utf8": frame by nothing (raw chunks decoded as a stream) instead of "\n". */
  streamingText?: boolean;
  /** TLS: the server's certificate and key files. */
  tls?: { certfile: string; keyfile: string };
  proxyProtocol?: boolean;
  idleTimeoutMs?: number;
  handshakeTimeoutMs?: number;
  maxConnections?: number;
  maxConnectionsPerPeer?: number;
  /** listen() backlog (default 4096 here, so bursts of connects are not dropped by the kernel). */
  backlog?: number;
  writeHighWaterMark?: number;
  writeBufferLimit?: number;
  /** "relay": the proxy's relay() highWaterMark (default 256 KiB here). */
  relayHighWaterMark?: number;
  /** "faulty": how often (0..1) the auxiliary server's connections throw in their constructor / onConnect. */
  auxThrowRate?: number;
  /** A second server of the same class shares the port (the option reusePort on both); health's app counts each one's accepts. */
  reusePort?: boolean;
  /** The server option transport (default: as PANTS_TS_TRANSPORT says). */
  transport?: "native" | "js";
}

/** Log lines counted by the server's logger, by level. */
export interface LogCounts {
  error: number;
  warn: number;
  info: number;
  debug: number;
  /** Of the debug lines: a stream's handler failing again after its close (the first failure is the error line). */
  repeatFailures: number;
}

/** Counters of a pants-ts Stats object (a copy). */
export interface StatsCopy {
  open: number;
  accepted: number;
  rejected: number;
  closed: number;
  bytesIn: number;
  bytesOut: number;
  errors: number;
  errorsByKind: Record<string, number>;
}

/** What the server child reports about itself. */
export interface Health {
  pid: number;
  uptimeMs: number;
  /** process.memoryUsage(), taken after a forced GC when `gc` is true. */
  memory: { rss: number; heapTotal: number; heapUsed: number; external: number; arrayBuffers: number };
  /** The highest values sampled (every 50 ms) since the last `resetPeak`. */
  peak: { rss: number; heapUsed: number; arrayBuffers: number };
  gc: boolean;
  /** Entries of /proc/self/fd (-1 if it could not be read, e.g. at the descriptor limit). */
  fds: number;
  /** Open connections of every server in the child (server.channels), and the relay scenario's upstream streams. */
  open: number;
  /** server.stats of the main server (and of the auxiliary one, added). */
  stats: StatsCopy;
  logs: LogCounts;
  /** The first warn/error lines, for the report. */
  logSamples: string[];
  uncaught: number;
  unhandled: number;
  /** process 'warning' events (e.g. MaxListenersExceededWarning: a leak). */
  processWarnings: number;
  /** The first uncaught exceptions / rejections / warnings. */
  faultSamples: string[];
  /** Counters kept by the connection classes (deliberate throws, rejected lengths, sequence errors, ...). */
  app: Record<string, number>;
}

/** Orchestrator → server child. */
export type ServerRequest = { op: "health"; id: number; gc: boolean; resetPeak: boolean } | { op: "exit" };

/** Server child → orchestrator. */
export type ServerReply = { op: "ready"; port: number; auxPort: number | null } | { op: "health"; id: number; health: Health };

/** The load child's jobs. */
export type LoadJob =
  | { mode: "concurrent"; port: number; conns: number; rounds: number; connectConcurrency: number; timeoutMs: number }
  | { mode: "churn"; port: number; rate: number; seconds: number; maxInflight: number; timeoutMs: number };

/** What the load child reports. */
export interface LoadReport {
  phase: "holding" | "done";
  /** Connections attempted / established / failed to connect. */
  attempted: number;
  connected: number;
  connectFailed: number;
  /** Round trips whose reply matched byte for byte. */
  roundTrips: number;
  /** Replies that differed from what was sent (a delivery bug). */
  mismatches: number;
  /** Connections that closed or failed before all their round trips. */
  broken: number;
  /** Up to 5 descriptions of failures. */
  samples: string[];
  elapsedMs: number;
  /** The load process's own descriptor limit. */
  nofile: number;
}

/** Orchestrator → load child (the job itself is given as `--job JSON`). */
export type LoadRequest = { op: "release" };

/**
 * The bytes the "big" server sends for `BIG n`: byte i of the reply is
 * `patternByte(i)`. The period is prime, so a chunk delivered twice, lost or
 * out of place never lines up with the expected bytes again.
 */
export const PATTERN_PERIOD = 65521;

/** Byte `i` of a big reply. */
export function patternByte(i: number): number {
  const k = i % PATTERN_PERIOD;
  return (k * 131 + (k >>> 8)) & 0xff;
}

/** Two periods of the pattern, so any slice of up to one period is a subarray. */
const PATTERN: Buffer = (() => {
  const b = Buffer.allocUnsafe(2 * PATTERN_PERIOD);
  for (let i = 0; i < b.length; i++) b[i] = patternByte(i);
  return b;
})();

/** The `n` (at most PATTERN_PERIOD) pattern bytes from position `pos`, as a view (copy it to own it). */
export function patternSlice(pos: number, n: number): Buffer {
  if (n > PATTERN_PERIOD) throw new RangeError("patternSlice: n is larger than the period");
  const start = pos % PATTERN_PERIOD;
  return PATTERN.subarray(start, start + n);
}
