/**
 * The stress campaign's server: a pants-ts server in a child process of its
 * own, so a crash is seen as a crash and its memory and descriptors are its
 * own. Started by stress/lib/proc.ts as
 *
 *   node --expose-gc dist/stress/server.js --scenario echo|framed|big|faulty|lent|ending|relay --options JSON
 *
 * with an IPC channel. It listens on 127.0.0.1 (port 0), sends
 * `{ op: "ready", port, auxPort }`, and answers `{ op: "health" }` with a
 * Health report: process.memoryUsage() (after a forced GC on request), the
 * /proc/self/fd count, the servers' stats, how many log lines of each level
 * pants-ts wrote (a counting logger is installed with setLogger), every
 * uncaught exception, unhandled rejection and process warning, and the
 * connection classes' own counters. It exits when asked, or when the
 * orchestrator goes away (the IPC channel disconnects).
 *
 * The connection classes are written the way an application should write
 * them: they validate lengths that come from the wire, respect
 * backpressure, and never write to a closed stream. Anything they do wrong
 * on purpose ("faulty") is counted in `app.deliberate`, so the orchestrator
 * can expect exactly that many error log lines.
 */
import { readdirSync } from "node:fs";
import { getHeapStatistics } from "node:v8";
import { NetStruct, Server, Stream, Struct, relay, setLogger } from "pants-ts";
import type { Address, Decoder, ServerOptions, Stats } from "pants-ts";
import {
  ANCHORED_RE_SOURCE,
  INT_FRAME,
  NETSTRUCT_FORMAT,
  STRUCT_HEADER,
  STRUCT_MAX_BODY,
  patternSlice,
  PATTERN_PERIOD,
} from "./lib/protocol.js";
import type { Framing, Health, LogCounts, Scenario, ServerConfig, ServerReply, ServerRequest, StatsCopy } from "./lib/protocol.js";

// ---------------------------------------------------------------------------
// Configuration

function argValue(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const scenario = (argValue("--scenario") ?? "echo") as Scenario;
const config: ServerConfig = JSON.parse(argValue("--options") ?? "{}") as ServerConfig;
if (!["echo", "framed", "big", "faulty", "lent", "ending", "relay"].includes(scenario)) {
  process.stderr.write(`stress server: unknown --scenario ${scenario}\n`);
  process.exit(2);
}

// ---------------------------------------------------------------------------
// Health bookkeeping

const MAX_SAMPLES = 8;
const logs: LogCounts = { error: 0, warn: 0, info: 0, debug: 0, repeatFailures: 0 };
const logSamples: string[] = [];
const faultSamples: string[] = [];
let uncaught = 0;
let unhandled = 0;
let processWarnings = 0;
/** Counters of the connection classes. */
const app: Record<string, number> = {};

function bump(name: string, by = 1): void {
  app[name] = (app[name] ?? 0) + by;
}

function describeError(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return `${err.name}${code !== undefined ? ` [${code}]` : ""}: ${err.message}`;
  }
  return String(err);
}

/** The counting logger: every pants-ts log line is counted; warn and error lines are kept as samples. */
function counting(level: "error" | "warn" | "info" | "debug") {
  return (objOrMsg: unknown, msg?: string): void => {
    logs[level]++;
    if (level === "debug" && typeof msg === "string" && msg.includes("failed again after it closed")) logs.repeatFailures++;
    if ((level === "warn" || level === "error") && logSamples.length < MAX_SAMPLES) {
      const fields = typeof objOrMsg === "object" && objOrMsg !== null ? (objOrMsg as { err?: unknown }) : null;
      const text = typeof objOrMsg === "string" ? objOrMsg : (msg ?? "");
      const err = fields?.err !== undefined ? ` (${describeError(fields.err)})` : "";
      logSamples.push(`${level}: ${text}${err}`);
    }
  };
}
setLogger({ error: counting("error"), warn: counting("warn"), info: counting("info"), debug: counting("debug") });

// Never let the process die silently: count, keep a sample, carry on (the orchestrator fails the case).
process.on("uncaughtException", (err) => {
  uncaught++;
  if (faultSamples.length < MAX_SAMPLES) faultSamples.push(`uncaughtException: ${describeError(err)}\n${(err as Error).stack ?? ""}`);
});
process.on("unhandledRejection", (reason) => {
  unhandled++;
  if (faultSamples.length < MAX_SAMPLES) faultSamples.push(`unhandledRejection: ${describeError(reason)}`);
});
process.on("warning", (warning) => {
  processWarnings++;
  if (faultSamples.length < MAX_SAMPLES) faultSamples.push(`warning: ${warning.name}: ${warning.message}`);
});

/**
 * process.memoryUsage(), which reads /proc for the RSS and so throws EMFILE
 * at the descriptor limit; then the V8 heap figures alone (rss and
 * arrayBuffers -1).
 */
function memoryUsage(): Health["memory"] {
  try {
    const m = process.memoryUsage();
    return { rss: m.rss, heapTotal: m.heapTotal, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers };
  } catch {
    const v = getHeapStatistics();
    return { rss: -1, heapTotal: v.total_heap_size, heapUsed: v.used_heap_size, external: v.external_memory, arrayBuffers: -1 };
  }
}

// Peak memory, sampled: what a slow reader or an oversized frame makes the server hold.
const peak = { rss: 0, heapUsed: 0, arrayBuffers: 0 };
function samplePeak(): void {
  const m = memoryUsage();
  if (m.rss > peak.rss) peak.rss = m.rss;
  if (m.heapUsed > peak.heapUsed) peak.heapUsed = m.heapUsed;
  if (m.arrayBuffers > peak.arrayBuffers) peak.arrayBuffers = m.arrayBuffers;
}
setInterval(samplePeak, 50).unref();

// ---------------------------------------------------------------------------
// Connection classes

const NL = Buffer.from("\n", "latin1");
const CRLF2 = Buffer.from("\r\n\r\n", "latin1");

/** Settings every connection class applies in onConnect. */
function applyLimits(stream: Stream): void {
  if (config.bufferSize !== undefined) stream.bufferSize = config.bufferSize;
  if (config.writeHighWaterMark !== undefined) stream.writeHighWaterMark = config.writeHighWaterMark;
  if (config.writeBufferLimit !== undefined) stream.writeBufferLimit = config.writeBufferLimit;
}

function formatRemote(address: Address | null): string {
  return Array.isArray(address) ? `${address[0]} ${address[1]}` : String(address);
}

/**
 * Lines of the canary client are "canary <seq> ..." with seq counting up
 * from its first line: any gap, repeat or reordering on the server side is
 * counted in `app.seqErrors`.
 */
class SequenceCheck {
  #last = -1;
  see(line: Buffer | string): void {
    const text = typeof line === "string" ? line.slice(0, 24) : line.toString("latin1", 0, Math.min(24, line.length));
    if (!text.startsWith("canary ")) return;
    const seq = Number.parseInt(text.slice(7), 10);
    if (this.#last >= 0 && seq !== this.#last + 1) bump("seqErrors");
    this.#last = seq;
    bump("canaryLines");
  }

  /** The canary's lines and the like: counted (see), then written back with their "\n". */
  echo(stream: Stream, line: Buffer): void {
    this.see(line);
    stream.write(line);
    stream.write(NL);
  }
}

/** "echo": one line in, the same line out ("\n"; with encoding "utf8", strings). */
class LineEcho extends Stream {
  readonly #seq = new SequenceCheck();

  override onConnect(): void {
    applyLimits(this);
    if (config.encoding === "utf8") this.encoding = "utf8";
    this.readDelimiter = config.encoding === "utf8" && config.streamingText === true ? null : "\n";
    // Behind PROXY protocol, greet with the client address the header announced.
    if (config.proxyProtocol === true) this.write(`addr ${formatRemote(this.remoteAddress)}\n`);
  }

  override onRead(line: Buffer | string): void {
    this.#seq.see(line);
    if (typeof line === "string") {
      this.write(config.streamingText === true ? line : `${line}\n`);
    } else {
      this.write(line);
      this.write(NL);
    }
  }
}

/**
 * "lent": every raw chunk back, by a handler that keeps none, so the native
 * transport lends its reads (reuseReadBuffer); pants-ts stops reading while
 * the peer is slow (writeHighWaterMark).
 */
class LentEcho extends Stream {
  override onConnect(): void {
    applyLimits(this);
    this.reuseReadBuffer = true;
  }

  override onRead(chunk: Buffer): void {
    this.write(chunk);
  }
}

const STRUCT = new Struct(STRUCT_HEADER);
const NETSTRUCT = new NetStruct(NETSTRUCT_FORMAT);
const ANCHORED = new RegExp(ANCHORED_RE_SOURCE);

/** The `decoder` framing: a type byte, a u16 length, that many bytes. */
const decodeTlv: Decoder = (buf) => {
  if (buf.length < 3) return null;
  const end = 3 + buf.readUInt16BE(1);
  if (buf.length < end) return null;
  return { consumed: end, args: [buf.subarray(0, end)] };
};

/**
 * "framed": echoes every frame back as the bytes it arrived as, for the
 * framing in `config.framing`. The `struct` protocol is a header
 * (tag, signed length) followed by a body framed by an integer delimiter;
 * the length is checked against the application's own limit before it is
 * used (a length from the wire must never become a delimiter unchecked).
 */
class FramedEcho extends Stream {
  readonly #framing: Framing = config.framing ?? "lf";
  #tag = 0;
  #inBody = false;

  override onConnect(): void {
    applyLimits(this);
    switch (this.#framing) {
      case "lf":
        this.readDelimiter = "\n";
        break;
      case "crlf2":
        this.readDelimiter = "\r\n\r\n";
        break;
      case "int":
        this.readDelimiter = INT_FRAME;
        break;
      case "regex":
        this.readDelimiter = /\r?\n/;
        break;
      case "regex-anchored":
        this.regexSearch = false;
        this.readDelimiter = ANCHORED;
        break;
      case "struct":
        this.readDelimiter = STRUCT;
        break;
      case "netstruct":
        this.readDelimiter = NETSTRUCT;
        break;
      case "decoder":
        this.readDelimiter = decodeTlv;
        break;
    }
  }

  override onRead(...args: unknown[]): void {
    switch (this.#framing) {
      case "lf":
      case "regex":
        this.write(args[0] as Buffer);
        this.write(NL);
        return;
      case "crlf2":
        this.write(args[0] as Buffer);
        this.write(CRLF2);
        return;
      case "int":
      case "decoder":
        this.write(args[0] as Buffer);
        return;
      case "regex-anchored":
        this.write(Buffer.from((args[0] as RegExpExecArray)[0], "latin1"));
        return;
      case "netstruct":
        this.writePacked([args[0], args[1]]);
        return;
      case "struct":
        this.#onStruct(args);
        return;
    }
  }

  #onStruct(args: unknown[]): void {
    if (this.#inBody) {
      const body = args[0] as Buffer;
      this.writePacked([this.#tag, body.length], { format: STRUCT });
      this.write(body);
      this.#inBody = false;
      this.readDelimiter = STRUCT;
      return;
    }
    const [tag, length] = args as [number, number];
    if (length < 0 || length > STRUCT_MAX_BODY) {
      // What an application must do with a length it cannot accept: never
      // use it as a delimiter; answer what came before it, then hang up.
      bump("lengthRejected");
      this.close(true);
      return;
    }
    if (length === 0) {
      this.writePacked([tag, 0], { format: STRUCT });
      return;
    }
    this.#tag = tag;
    this.#inBody = true;
    this.readDelimiter = length;
  }
}

const BIG_CHUNK = 64 * 1024;
const BLAST_CHUNK = 1024 * 1024;

/** `n` pattern bytes from position `pos`, in a Buffer of their own. */
function patternBytes(pos: number, n: number): Buffer {
  const out = Buffer.allocUnsafe(n);
  for (let off = 0; off < n; off += PATTERN_PERIOD) patternSlice(pos + off, Math.min(PATTERN_PERIOD, n - off)).copy(out, off);
  return out;
}

/**
 * Writes pattern bytes from `pos` on, at most `left` of them, while `stream`
 * takes writes and has less than writeHighWaterMark queued (a reply produced
 * as the peer reads it, from onWrite); returns how many it wrote.
 */
function pumpPattern(stream: Stream, pos: number, left: number): number {
  let written = 0;
  while (written < left && stream.writable && stream.bufferedAmount < stream.writeHighWaterMark) {
    const n = Math.min(BIG_CHUNK, left - written, PATTERN_PERIOD);
    stream.write(Buffer.from(patternSlice(pos + written, n)));
    written += n;
  }
  return written;
}

/**
 * "big": lines are echoed, except
 *   BIG <n> stream   n pattern bytes, produced as the peer reads them (onWrite)
 *   BIG <n> blast    n pattern bytes written at once, ignoring backpressure
 *                    (writeBufferLimit stops it; the class stops writing once closed)
 *   DELAY <ms> <t>   "<t>\n" after ms milliseconds (an async reply)
 */
class BigReply extends Stream {
  readonly #seq = new SequenceCheck();
  #remaining = 0;
  #pos = 0;
  #closeWhenDone = false;

  override onConnect(): void {
    applyLimits(this);
    this.readDelimiter = "\n";
  }

  override async onRead(line: Buffer): Promise<void> {
    const text = line.toString("latin1");
    if (text.startsWith("BIG ")) {
      const [, size, mode] = text.split(" ");
      const n = Number(size);
      if (mode === "blast") this.#blast(n);
      else {
        this.#remaining = n;
        this.#pos = 0;
        this.#pump();
      }
      return;
    }
    if (text.startsWith("DELAY ")) {
      const [, ms, ...rest] = text.split(" ");
      await new Promise((resolve) => setTimeout(resolve, Number(ms)));
      if (this.closed) {
        bump("delayedReplyLost");
        return;
      }
      this.write(`${rest.join(" ")}\n`);
      bump("delayedReplySent");
      return;
    }
    this.#seq.echo(this, line);
  }

  override onWrite(): void {
    this.#pump();
    if (this.#closeWhenDone && this.#remaining === 0) this.close();
  }

  /** The peer half-closed: finish the reply still being produced, then close (the default would close now). */
  override onEnd(): void {
    if (this.#remaining > 0) this.#closeWhenDone = true;
    else this.close();
  }

  override onClose(): void {
    if (this.#remaining > 0) bump("bigUnfinished");
  }

  /** Produces the reply while the peer keeps up: at most writeHighWaterMark bytes are ever queued. */
  #pump(): void {
    const n = pumpPattern(this, this.#pos, this.#remaining);
    if (n === 0) return;
    this.#pos += n;
    this.#remaining -= n;
    // Queued bytes only grow within one pump: the peak is where it stopped.
    if (this.bufferedAmount > (app["maxBuffered"] ?? 0)) app["maxBuffered"] = this.bufferedAmount;
    if (this.#remaining === 0) bump("bigDone");
  }

  /** Writes everything at once in fresh 1 MiB buffers, as a careless producer would. */
  #blast(n: number): void {
    let pos = 0;
    while (pos < n && !this.closed) {
      const size = Math.min(BLAST_CHUNK, n - pos);
      this.write(patternBytes(pos, size));
      pos += size;
    }
    bump(this.closed ? "blastStopped" : "blastQueued");
  }
}

/**
 * "ending": our side's half-close. Lines are echoed (the canary's), except
 *   END <n> write|stream   n pattern bytes, written at once or produced as
 *                          the peer reads them (onWrite), then end(): a FIN
 *                          once they have gone, and the stream goes on reading
 *   TRAILER <text>         counted in app.trailers when it arrives after
 *                          end(), in app.trailerEarly before
 * The peer's FIN (onEnd) is counted in app.peerEnds after a trailer, in
 * app.peerEndsWithoutTrailer otherwise, and closes the stream (the
 * default); every END connection's onClose in app.endingCloses, a second
 * one in app.closedTwice.
 */
class EndingReply extends Stream {
  readonly #seq = new SequenceCheck();
  #ending = false;
  #remaining = 0;
  #pos = 0;
  #ended = false;
  #closes = 0;
  #trailer = false;

  override onConnect(): void {
    applyLimits(this);
    this.readDelimiter = "\n";
  }

  override onRead(line: Buffer): void {
    const text = line.toString("latin1");
    if (text.startsWith("END ")) {
      const [, size, mode] = text.split(" ");
      const n = Number(size);
      this.#ending = true;
      if (mode === "write") {
        if (n > 0) this.write(patternBytes(0, n));
        if (this.writable) this.#end();
      } else {
        this.#remaining = n;
        this.#pos = 0;
        this.#pump();
      }
      return;
    }
    if (text.startsWith("TRAILER ")) {
      this.#trailer = true;
      bump(this.#ended ? "trailers" : "trailerEarly");
      return;
    }
    this.#seq.echo(this, line);
  }

  override onWrite(): void {
    this.#pump();
  }

  override onEnd(): void {
    if (this.#ending) bump(this.#trailer ? "peerEnds" : "peerEndsWithoutTrailer");
    super.onEnd();
  }

  override onClose(): void {
    if (!this.#ending) return;
    if (++this.#closes > 1) bump("closedTwice");
    bump("endingCloses");
  }

  /** Produces the reply while the peer keeps up, then ends our side. */
  #pump(): void {
    if (!this.#ending || this.#ended) return;
    const n = pumpPattern(this, this.#pos, this.#remaining);
    this.#pos += n;
    this.#remaining -= n;
    if (this.#remaining === 0 && this.writable) this.#end();
  }

  #end(): void {
    this.#ended = true;
    bump("endCalled");
    this.end();
  }
}

/**
 * "faulty": handlers that fail on purpose. Lines starting with "!" are
 * commands, every other line is echoed:
 *   !throw  !reject  !reject-later  !write-throw  !throw-on-write  !throw-on-close
 * Every deliberate failure is counted in app.deliberate before it happens.
 */
class Faulty extends Stream {
  readonly #seq = new SequenceCheck();
  #throwOnWrite = false;
  #throwOnClose = false;

  override onConnect(): void {
    applyLimits(this);
    this.readDelimiter = "\n";
  }

  override onRead(line: Buffer): void | Promise<void> {
    if (line[0] !== 0x21 /* ! */) {
      this.#seq.echo(this, line);
      return;
    }
    const command = line.toString("latin1");
    switch (command) {
      case "!throw":
        bump("deliberate");
        throw new Error("deliberate: onRead threw");
      case "!reject":
        bump("deliberate");
        return Promise.reject(new Error("deliberate: onRead returned a rejected promise"));
      case "!reject-later":
        return (async () => {
          await new Promise((resolve) => setTimeout(resolve, 1 + Math.floor(Math.random() * 10)));
          bump("deliberate");
          throw new Error("deliberate: async onRead rejected later");
        })();
      case "!write-throw":
        this.write("partial\n");
        bump("deliberate");
        throw new Error("deliberate: onRead wrote, then threw");
      case "!throw-on-write":
        this.#throwOnWrite = true;
        this.write("armed\n");
        return;
      case "!throw-on-close":
        this.#throwOnClose = true;
        this.write("armed\n");
        return;
      default:
        this.write(`unknown ${command}\n`);
    }
  }

  override onWrite(): void {
    if (this.#throwOnWrite) {
      this.#throwOnWrite = false;
      bump("deliberate");
      throw new Error("deliberate: onWrite threw");
    }
  }

  override onClose(): void {
    if (this.#throwOnClose) {
      this.#throwOnClose = false;
      bump("deliberate");
      throw new Error("deliberate: onClose threw");
    }
  }
}

/**
 * The "faulty" scenario's second server: connections that fail as they are
 * made, at random (config.auxThrowRate): a constructor that throws, an
 * onConnect that throws or returns a rejected promise. The others echo lines.
 * Handlers running on an instance whose constructor threw are counted in
 * app.zombieHandlers (they must never run).
 */
class ThrowsEarly extends Stream {
  ctorFailed = false;

  constructor(options?: ConstructorParameters<typeof Stream>[0]) {
    super(options);
    if (Math.random() < (config.auxThrowRate ?? 0.2)) {
      this.ctorFailed = true;
      bump("deliberate");
      throw new Error("deliberate: the connection class constructor threw");
    }
  }

  override onConnect(): void | Promise<void> {
    if (this.ctorFailed) {
      bump("zombieHandlers");
      return;
    }
    const rate = config.auxThrowRate ?? 0.2;
    const r = Math.random();
    if (r < rate) {
      bump("deliberate");
      throw new Error("deliberate: onConnect threw");
    }
    if (r < 2 * rate) {
      bump("deliberate");
      return Promise.reject(new Error("deliberate: onConnect returned a rejected promise"));
    }
    this.readDelimiter = "\n";
  }

  override onRead(line: Buffer): void {
    if (this.ctorFailed) bump("zombieHandlers");
    this.write(line);
    this.write(NL);
  }

  override onClose(): void {
    if (this.ctorFailed) bump("zombieHandlers");
  }
}

/** The relay scenario's pass-through: its upstream streams still open (they are no server's channels). */
let relayUpstreamsOpen = 0;

/**
 * "relay": a proxy. Every connection is relayed (relay()) to a stream
 * connected, still connecting, to the upstream server of the same process
 * (UpstreamReply, on the auxiliary port). relaysDone counts the relays
 * whose promise resolved, relayBytesUp/relayBytesDown what they moved.
 */
class RelayProxy extends Stream {
  override onConnect(): void {
    applyLimits(this);
    const upstream = new Stream();
    relayUpstreamsOpen++;
    bump("proxyUpstreams");
    upstream.onClose = () => {
      relayUpstreamsOpen--;
    };
    upstream.connect(["127.0.0.1", auxPort!]);
    void relay(this, upstream, { highWaterMark: config.relayHighWaterMark ?? 256 * 1024 }).then(({ bytesAtoB, bytesBtoA }) => {
      bump("relaysDone");
      bump("relayBytesUp", bytesAtoB);
      bump("relayBytesDown", bytesBtoA);
    });
  }
}

/**
 * The relay scenario's upstream. Lines are echoed (the canary's), except
 *   SEND <n>   n pattern bytes, produced as the peer reads them (onWrite);
 *              every byte after this line is an upload, checked against
 *              the pattern and counted; once the reply is out and the
 *              peer has sent its FIN: "\nGOT <uploaded> <wrongAt>\n", then
 *              close (wrongAt: the upload's first wrong byte, or -1)
 * Counted: app.sends (SEND lines), app.uploaded (bytes), app.uploadWrong
 * (uploads with a wrong byte), app.upstreamEnds (a FIN after SEND),
 * app.answered (GOT lines written), app.upstreamCloses (onClose after SEND),
 * app.upstreamClosedTwice.
 */
class UpstreamReply extends Stream {
  readonly #seq = new SequenceCheck();
  #sending = false;
  #remaining = 0;
  #pos = 0;
  #uploaded = 0;
  #wrongAt = -1;
  #peerEnded = false;
  #closes = 0;

  override onConnect(): void {
    applyLimits(this);
    this.readDelimiter = "\n";
  }

  override onRead(data: Buffer): void {
    if (this.#sending) {
      this.#upload(data);
      return;
    }
    const text = data.toString("latin1");
    if (text.startsWith("SEND ")) {
      this.#sending = true;
      bump("sends");
      this.#remaining = Number(text.slice(5));
      this.readDelimiter = null; // the upload, raw (what is buffered already comes next)
      this.#pump();
      return;
    }
    this.#seq.echo(this, data);
  }

  override onWrite(): void {
    this.#pump();
  }

  override onEnd(): void {
    if (!this.#sending) {
      this.close(true);
      return;
    }
    bump("upstreamEnds");
    this.#peerEnded = true;
    this.#pump();
  }

  override onClose(): void {
    if (!this.#sending) return;
    if (++this.#closes > 1) bump("upstreamClosedTwice");
    bump("upstreamCloses");
  }

  #upload(chunk: Buffer): void {
    for (let k = 0; k < chunk.length && this.#wrongAt < 0; ) {
      const pos = this.#uploaded + k;
      const n = Math.min(chunk.length - k, PATTERN_PERIOD - (pos % PATTERN_PERIOD));
      if (!chunk.subarray(k, k + n).equals(patternSlice(pos, n))) {
        this.#wrongAt = pos;
        bump("uploadWrong");
      }
      k += n;
    }
    this.#uploaded += chunk.length;
    bump("uploaded", chunk.length);
  }

  /** The reply while the peer keeps up; once it is out and the peer has ended, the count, then close. */
  #pump(): void {
    if (!this.#sending || !this.writable) return;
    const n = pumpPattern(this, this.#pos, this.#remaining);
    this.#pos += n;
    this.#remaining -= n;
    if (this.#remaining === 0 && this.#peerEnded) {
      this.write(`\nGOT ${this.#uploaded} ${this.#wrongAt}\n`);
      bump("answered");
      this.close(true);
    }
  }
}

// ---------------------------------------------------------------------------
// Servers

const CLASSES: Record<Scenario, typeof Stream> = {
  echo: LineEcho,
  framed: FramedEcho,
  big: BigReply,
  faulty: Faulty,
  lent: LentEcho,
  ending: EndingReply,
  relay: RelayProxy,
};

function serverOptions(): ServerOptions {
  const options: ServerOptions = {};
  if (config.tls !== undefined) options.sslOptions = { certfile: config.tls.certfile, keyfile: config.tls.keyfile };
  if (config.proxyProtocol === true) options.proxyProtocol = true;
  if (config.idleTimeoutMs !== undefined) options.idleTimeoutMs = config.idleTimeoutMs;
  if (config.handshakeTimeoutMs !== undefined) options.handshakeTimeoutMs = config.handshakeTimeoutMs;
  if (config.maxConnections !== undefined) options.maxConnections = config.maxConnections;
  if (config.maxConnectionsPerPeer !== undefined) options.maxConnectionsPerPeer = config.maxConnectionsPerPeer;
  if (config.reusePort === true) options.reusePort = true;
  if (config.transport !== undefined) options.transport = config.transport;
  return options;
}

async function listen(server: Server): Promise<number> {
  server.listen(["127.0.0.1", 0], config.backlog ?? 4096);
  await server.ready();
  const address = server.localAddress;
  if (!Array.isArray(address)) throw new Error(`unexpected listening address ${String(address)}`);
  return address[1];
}

const main = new Server(CLASSES[scenario], serverOptions());
// With reusePort, a twin of the main server on its port: the kernel spreads the connections between them.
const twin = config.reusePort === true ? new Server(CLASSES[scenario], serverOptions()) : null;
const aux = scenario === "faulty" ? new Server(ThrowsEarly, serverOptions()) : scenario === "relay" ? new Server(UpstreamReply) : twin;
const port = await listen(main);
let auxPort: number | null = null;
if (twin !== null) {
  twin.listen(["127.0.0.1", port], config.backlog ?? 4096);
  await twin.ready();
} else if (aux !== null) auxPort = await listen(aux);

function copyStats(a: Stats, b: Stats | null): StatsCopy {
  const out: StatsCopy = { ...a, errorsByKind: { ...a.errorsByKind } };
  if (b !== null) {
    out.open += b.open;
    out.accepted += b.accepted;
    out.rejected += b.rejected;
    out.closed += b.closed;
    out.bytesIn += b.bytesIn;
    out.bytesOut += b.bytesOut;
    out.errors += b.errors;
    for (const [k, v] of Object.entries(b.errorsByKind)) out.errorsByKind[k] = (out.errorsByKind[k] ?? 0) + v;
  }
  return out;
}

function countFds(): number {
  try {
    return readdirSync("/proc/self/fd").length - 1; // minus the descriptor of the listing itself
  } catch {
    return -1; // e.g. EMFILE while at the descriptor limit
  }
}

async function fullGc(): Promise<boolean> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) return false;
  // Several passes with turns in between, so weak callbacks and finalizers run.
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
  return true;
}

async function health(gc: boolean, resetPeak: boolean): Promise<Health> {
  const collected = gc ? await fullGc() : false;
  const m = memoryUsage();
  const report: Health = {
    pid: process.pid,
    uptimeMs: Math.round(process.uptime() * 1000),
    memory: m,
    peak: { ...peak },
    gc: collected,
    fds: countFds(),
    open: main.channels.size + (aux?.channels.size ?? 0) + relayUpstreamsOpen,
    stats: copyStats(main.stats, aux?.stats ?? null),
    logs: { ...logs },
    logSamples: [...logSamples],
    uncaught,
    unhandled,
    processWarnings,
    faultSamples: [...faultSamples],
    app: twin !== null ? { ...app, mainAccepted: main.stats.accepted, twinAccepted: twin.stats.accepted } : { ...app },
  };
  if (resetPeak) {
    peak.rss = m.rss;
    peak.heapUsed = m.heapUsed;
    peak.arrayBuffers = m.arrayBuffers;
  }
  return report;
}

function send(message: ServerReply): void {
  if (process.send !== undefined && process.connected) process.send(message);
}

process.on("message", (message: ServerRequest) => {
  if (message.op === "health") {
    void health(message.gc, message.resetPeak).then((h) => send({ op: "health", id: message.id, health: h }));
  } else if (message.op === "exit") {
    main.close();
    aux?.close();
    process.exit(0);
  }
});
// The orchestrator is gone: do not outlive it.
process.on("disconnect", () => process.exit(0));

send({ op: "ready", port, auxPort });
