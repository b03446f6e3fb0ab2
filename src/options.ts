/**
 * Unknown option keys. `new Server(C, { idleTimeout: 5000 })` (the option is
 * `idleTimeoutMs`) would otherwise do nothing, silently: each options
 * object the public API takes warns once, through the package logger, of
 * each key it does not know, naming the nearest known one. A warning, not
 * an error: an application may pass a wider configuration object of its own.
 */
import { log } from "./log.js";

/** Warned already, by where and key; bounded, so that keys made up at run time cannot grow it for ever. */
const warned = new Set<string>();
const MAX_WARNED = 1024;

/** @internal The keys of an options type as a set; the type checker holds the list to the type's keys, all of them. */
export function optionKeys<T>(keys: Record<keyof T, true>): ReadonlySet<string> {
  return new Set(Object.keys(keys));
}

/**
 * @internal Warns once (per `where` and key) of each own enumerable string
 * key of `options` that is not in `known`.
 * @param where The call that took the options, as the warning names it: `"new Server()"`.
 */
export function checkOptionKeys(where: string, options: object, known: ReadonlySet<string>): void {
  for (const key in options) {
    if (!known.has(key) && Object.hasOwn(options, key)) warnUnknown(where, key, nearest(key, known, 3));
  }
}

/**
 * Pants' own TLS option names (SslOptions' and SniEntry's), which node:tls
 * does not know: a key near one of them is a misspelling that would be
 * passed on to node:tls and ignored there (`certFile`, `serverSide`).
 */
const PANTS_SSL_KEYS: ReadonlySet<string> = new Set(["certfile", "keyfile", "ca_certs", "cert_reqs", "server_side", "do_handshake_on_connect", "sni"]);

/**
 * @internal SslOptions extend node:tls's, whose keys are many and grow with
 * Node: only a key within two edits (case, `_` and `-` aside) of one of
 * pants-ts's own names, and not one itself, is warned of.
 */
export function checkSslOptionKeys(where: string, options: object): void {
  for (const key in options) {
    if (PANTS_SSL_KEYS.has(key) || !Object.hasOwn(options, key)) continue;
    const near = nearest(key, PANTS_SSL_KEYS, 2);
    if (near !== null) warnUnknown(where, key, near);
  }
}

function warnUnknown(where: string, key: string, near: string | null): void {
  const id = `${where}\0${key}`;
  if (warned.has(id) || warned.size >= MAX_WARNED) return;
  warned.add(id);
  const hint = near === null ? "" : ` Did you mean ${near}?`;
  log.current.warn(near === null ? { option: key } : { option: key, suggestion: near }, `Unknown option "${key}" given to ${where} is ignored.${hint}`);
}

/** The known key nearest `key` (case, `_` and `-` aside), if within `most` edits; null if none is that near. */
function nearest(key: string, known: ReadonlySet<string>, most: number): string | null {
  const plain = normalize(key);
  // A short key is near anything short: allow a third of its length at most.
  const limit = Math.min(most, Math.max(1, Math.floor(plain.length / 3)));
  let best: string | null = null;
  let bestDistance = limit + 1;
  for (const candidate of known) {
    const d = editDistance(plain, normalize(candidate), bestDistance);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}

function normalize(key: string): string {
  return key.toLowerCase().replace(/[_-]/g, "");
}

/** Levenshtein distance of `a` and `b`, or `cap` once it is known to be at least that. */
function editDistance(a: string, b: string, cap: number): number {
  if (Math.abs(a.length - b.length) >= cap) return cap;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      const d = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      row.push(d);
      if (d < rowMin) rowMin = d;
    }
    if (rowMin >= cap) return cap;
    prev = row;
  }
  return Math.min(prev[b.length]!, cap);
}
