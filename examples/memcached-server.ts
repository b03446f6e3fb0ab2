/**
 * memcached-server: a cache speaking memcached's text protocol, enough for
 * the libmemcached tools (memccp, memccat, memcrm, memcflush, memctouch,
 * memcexist, memcping, memcstat) and any memcached client in text mode.
 *
 *   get|gets key...                                 -> VALUE key flags bytes [cas] / data ... END
 *   set|add|replace|append|prepend key flags exptime bytes [noreply]   (then a data block)
 *   cas key flags exptime bytes unique [noreply]    (then a data block)
 *   delete key [noreply]   incr|decr key delta [noreply]   touch key exptime [noreply]
 *   flush_all [delay] [noreply]   version   verbosity level [noreply]   stats   quit
 *
 * exptime: 0 never expires, negative is expired at once, up to 30 days is
 * relative seconds, more is an absolute unix time. Values are at most 1 MiB.
 *
 *   npx tsx examples/memcached-server.ts   # listens on 127.0.0.1:$PORT (default 11212; 0 picks a free port)
 *   memccp --servers=127.0.0.1:11212 README.md && memccat --servers=127.0.0.1:11212 README.md
 *   printf 'set a 0 0 5\r\nhello\r\nget a\r\n' | nc -q1 localhost 11212
 *
 * Framing: command lines end in "\n" (a "\r" before it is dropped); a
 * storage command then switches to the integer delimiter bytes + 2 for its
 * data block and its "\r\n", and back to lines, inside onRead.
 */
import { pathToFileURL } from "node:url";
import { Server, Stream } from "pants-ts";
import type { BufferOverflowError } from "pants-ts";

const MAX_KEY = 250;
const MAX_VALUE = 1024 * 1024;
const MAX_LINE = 64 * 1024; // bufferSize: longer command lines close the connection
const THIRTY_DAYS = 60 * 60 * 24 * 30;
const U64 = 2n ** 64n;
const VERSION = "1.6.0-pants-ts";

interface Item {
  value: Buffer;
  flags: number;
  expiresAt: number; // Date.now() ms; Infinity: never
  storedAt: number;
  cas: number;
}

/** The cache, shared by every connection. Keys are latin1 strings (binary-safe). */
const cache = new Map<string, Item>();
let lastCas = 0;
let flushAt = -Infinity; // flush_all with a delay: items stored before this time die at it

function lookup(key: string): Item | undefined {
  const item = cache.get(key);
  const now = Date.now();
  if (item !== undefined && (item.expiresAt <= now || (flushAt <= now && item.storedAt <= flushAt))) {
    cache.delete(key);
    return undefined;
  }
  return item;
}

function put(key: string, value: Buffer, flags: number, expiresAt: number): void {
  cache.set(key, { value, flags, expiresAt, storedAt: Date.now(), cas: ++lastCas });
}

/** exptime as memcached reads it, to an absolute Date.now() time. */
function expiry(exptime: number): number {
  if (exptime === 0) return Infinity;
  if (exptime < 0) return 0;
  return exptime > THIRTY_DAYS ? exptime * 1000 : Date.now() + exptime * 1000;
}

const isU32 = (t: string | undefined): boolean => t !== undefined && /^\d{1,10}$/.test(t) && Number(t) < 2 ** 32;
const isI32 = (t: string | undefined): boolean => t !== undefined && /^-?\d{1,10}$/.test(t) && Math.abs(Number(t)) < 2 ** 31;
const isU64 = (t: string | undefined): boolean => t !== undefined && /^\d{1,20}$/.test(t) && BigInt(t) < U64;

/** Commands with a key after their name, and those that take `noreply` last. */
const KEYED = new Set(["set", "add", "replace", "append", "prepend", "cas", "delete", "incr", "decr", "touch"]);
const NOREPLY = new Set([...KEYED, "flush_all", "verbosity"]);

/** A storage command waiting for its data block. */
interface PendingStore {
  command: string;
  key: string;
  flags: number;
  exptime: number;
  cas: bigint;
  noreply: boolean;
}

export default class MemcachedConnection extends Stream {
  pending: PendingStore | null = null;
  swallowing = 0; // bytes of a refused data block still to drop
  noreply = false;

  override onConnect(): void {
    this.readDelimiter = "\n";
    this.bufferSize = MAX_LINE;
  }

  override onRead(frame: Buffer): void {
    if (this.swallowing > 0) {
      this.swallowing -= frame.length;
      this.readDelimiter = this.swallowing > 0 ? Math.min(this.swallowing, MAX_LINE) : "\n";
    } else if (this.pending !== null) {
      this.readDelimiter = "\n"; // back to command lines once this block is stored
      this.store(this.pending, frame);
      this.pending = null;
    } else {
      const line = frame.toString("latin1").replace(/\r$/, "");
      this.command(line.split(" ").filter((t) => t !== ""));
    }
  }

  command(tokens: string[]): void {
    const [name = "", key = "", ...rest] = tokens;
    const n = tokens.length;
    this.noreply = NOREPLY.has(name) && n > 1 && tokens[n - 1] === "noreply";
    if (KEYED.has(name) && key.length > MAX_KEY) return this.reply("CLIENT_ERROR bad command line format");
    switch (name) {
      case "get":
      case "gets":
        if (n < 2) return this.reply("ERROR");
        if (tokens.some((k) => k.length > MAX_KEY)) return this.reply("CLIENT_ERROR bad command line format");
        for (const k of tokens.slice(1)) {
          const item = lookup(k);
          if (item === undefined) continue;
          this.reply(`VALUE ${k} ${item.flags} ${item.value.length}${name === "gets" ? ` ${item.cas}` : ""}`);
          this.send(item.value);
          this.send("\r\n");
        }
        return this.reply("END");
      case "set":
      case "add":
      case "replace":
      case "append":
      case "prepend":
      case "cas": {
        const words = name === "cas" ? 6 : 5;
        if (n !== words && n !== words + 1) return this.reply("ERROR");
        const [flags, exptime, bytes] = rest;
        const cas = name === "cas" ? rest[3] : "0";
        if (!isU32(flags) || !isI32(exptime) || !isI32(bytes) || Number(bytes) < 0 || (name === "cas" && !isU64(cas))) {
          return this.reply("CLIENT_ERROR bad command line format");
        }
        const size = Number(bytes);
        if (size > MAX_VALUE) {
          this.swallowing = size + 2;
          this.readDelimiter = Math.min(this.swallowing, MAX_LINE);
          cache.delete(key); // as memcached does: a failed store leaves no stale value behind
          return this.reply("SERVER_ERROR object too large for cache");
        }
        this.pending = { command: name, key, flags: Number(flags), exptime: Number(exptime), cas: BigInt(cas), noreply: this.noreply };
        this.readDelimiter = size + 2; // the data block and its "\r\n"
        return;
      }
      case "delete":
        if (n < 2 || n > 4) return this.reply("ERROR");
        if ((n === 3 && rest[0] !== "0" && !this.noreply) || (n === 4 && (rest[0] !== "0" || !this.noreply))) {
          return this.reply("CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]");
        }
        return this.reply(lookup(key) !== undefined && cache.delete(key) ? "DELETED" : "NOT_FOUND");
      case "incr":
      case "decr": {
        if (n !== 3 && n !== 4) return this.reply("ERROR");
        if (!isU64(rest[0])) return this.reply("CLIENT_ERROR invalid numeric delta argument");
        const item = lookup(key);
        if (item === undefined) return this.reply("NOT_FOUND");
        const text = item.value.toString("latin1");
        if (!isU64(text)) return this.reply("CLIENT_ERROR cannot increment or decrement non-numeric value");
        const [value, delta] = [BigInt(text), BigInt(rest[0])];
        const next = name === "incr" ? (value + delta) % U64 : value > delta ? value - delta : 0n;
        item.value = Buffer.from(String(next));
        item.cas = ++lastCas;
        return this.reply(String(next));
      }
      case "touch": {
        if (n !== 3 && n !== 4) return this.reply("ERROR");
        if (!isI32(rest[0])) return this.reply("CLIENT_ERROR invalid exptime argument");
        const item = lookup(key);
        if (item !== undefined) item.expiresAt = expiry(Number(rest[0]));
        return this.reply(item !== undefined ? "TOUCHED" : "NOT_FOUND");
      }
      case "flush_all": {
        const delay = n > (this.noreply ? 2 : 1) ? key : "0";
        if (n > 3 || !isI32(delay) || Number(delay) < 0) return this.reply("CLIENT_ERROR bad command line format");
        if (delay === "0") {
          cache.clear();
          flushAt = -Infinity; // an immediate flush replaces a delayed one still to come
        } else {
          flushAt = Date.now() + Number(delay) * 1000;
        }
        return this.reply("OK");
      }
      case "version":
        return this.reply(`VERSION ${VERSION}`);
      case "stats": {
        const stats = {
          pid: process.pid,
          uptime: Math.floor(process.uptime()),
          time: Math.floor(Date.now() / 1000),
          version: VERSION,
          curr_items: cache.size,
          curr_connections: this.server?.channels.size ?? 1,
        };
        for (const [stat, value] of Object.entries(stats)) this.reply(`STAT ${stat} ${value}`);
        return this.reply("END");
      }
      case "verbosity":
        return this.reply(n === 2 || n === 3 ? "OK" : "ERROR");
      case "quit":
        return this.close();
      default:
        return this.reply("ERROR");
    }
  }

  /** Runs a storage command now that its data block (with its "\r\n") has arrived. */
  store(p: PendingStore, block: Buffer): void {
    this.noreply = p.noreply;
    const size = block.length - 2;
    if (block[size] !== 0x0d || block[size + 1] !== 0x0a) return this.reply("CLIENT_ERROR bad data chunk");
    const data = Buffer.from(block.subarray(0, size)); // a copy: the frame is a view of the read buffer
    const item = lookup(p.key);
    switch (p.command) {
      case "add":
        if (item !== undefined) return this.reply("NOT_STORED");
        break;
      case "replace":
      case "append":
      case "prepend":
        if (item === undefined) return this.reply("NOT_STORED");
        break;
      case "cas":
        if (item === undefined) return this.reply("NOT_FOUND");
        if (BigInt(item.cas) !== p.cas) return this.reply("EXISTS");
    }
    if (item !== undefined && (p.command === "append" || p.command === "prepend")) {
      const value = p.command === "append" ? Buffer.concat([item.value, data]) : Buffer.concat([data, item.value]);
      if (value.length > MAX_VALUE) return this.reply("SERVER_ERROR object too large for cache");
      put(p.key, value, item.flags, item.expiresAt);
    } else {
      put(p.key, data, p.flags, expiry(p.exptime));
    }
    this.reply("STORED");
  }

  /** Sends one reply line, unless the command said noreply. */
  reply(line: string): void {
    if (!this.noreply) this.send(Buffer.from(`${line}\r\n`, "latin1"));
  }

  /** Writes, unless a write before it passed writeBufferLimit (the client stopped reading) and closed the connection. */
  send(data: string | Buffer): void {
    if (this.writable) this.write(data);
  }

  /** A command line over bufferSize is a client error; replies over writeBufferLimit (a client that stopped reading) close at once. */
  override onOverflowError(err: BufferOverflowError): void {
    if (err.direction === "write") return super.onOverflowError(err);
    this.write("CLIENT_ERROR line too long\r\n");
    this.close();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const server = new Server(MemcachedConnection).listen(["127.0.0.1", Number(process.env.PORT ?? 11212)]);
  await server.ready();
  const stop = async (): Promise<void> => {
    await server.shutdown();
    process.exit(0);
  };
  process.once("SIGTERM", stop).once("SIGINT", stop); // before the line below: a signal right after it is handled
  const [host, port] = server.localAddress as [string, number];
  console.log(`memcached-server listening on ${host}:${port}`);
}
