/**
 * Unknown option keys. `new Server(C, { idleTimeout: 5000 })` (the option is
 * `idleTimeoutMs`) would otherwise do nothing, silently: each options
 * object the public API takes warns once, through the package logger, of
 * each key it does not know, naming the nearest known one. A warning, not
 * an error: an application may pass a wider configuration object of its own.
 */
import { log } from "./log.js";
import { describe, typeError } from "./errors.js";

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
  refuseList(where, options);
  for (const key in options) {
    if (!known.has(key) && Object.hasOwn(options, key)) warnUnknown(where, key, nearest(key, known, 3));
  }
}

/**
 * @internal An optional options argument, given: refused unless it is an
 * object (`TypeError`, "`where` options must be an object", then `hint`),
 * then its keys checked as {@link checkOptionKeys} does.
 */
export function checkOptions(where: string, options: unknown, known: ReadonlySet<string>, hint = ""): asserts options is object {
  if (options === null || typeof options !== "object") throw typeError(`${where} options must be an object, got ${describe(options)}.${hint}`);
  checkOptionKeys(where, options, known);
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
  refuseList(where, options);
  for (const key in options) {
    if (PANTS_SSL_KEYS.has(key) || !Object.hasOwn(options, key)) continue;
    const near = nearest(key, PANTS_SSL_KEYS, 2);
    if (near !== null) warnUnknown(where, key, near);
  }
}

/**
 * An array or a Buffer given as options (an argument in the wrong place) is
 * an object too, but every index would be an unknown key: a 10 MB Buffer
 * took minutes of warnings. It is refused instead.
 * @throws TypeError (`ERR_INVALID_ARG_TYPE`).
 */
function refuseList(where: string, options: object): void {
  if (Array.isArray(options) || ArrayBuffer.isView(options) || options instanceof ArrayBuffer) {
    throw typeError(`${where} takes an options object, got ${describe(options)}.`);
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

/**
 * Class fields over a base class's accessors. JavaScript defines a class
 * field on the instance, so `class Echo extends Stream { readDelimiter = "\n" }`
 * puts a plain `readDelimiter` value in front of Stream's setter, which never
 * runs: the stream would frame nothing, silently. (TypeScript reports it as
 * error TS2610; JavaScript and type-stripping runners do not.)
 */
const shadowingFields = new WeakMap<object, readonly string[]>();
/** Per base prototype: its accessors' names, and whether each can be set. */
const accessorsByBase = new WeakMap<object, ReadonlyMap<string, boolean>>();

/**
 * @internal Sets each own field of `instance` that hides a setter of `base`
 * (a prototype: `Stream.prototype`) through that setter, as if the class's
 * constructor had assigned it: the field is deleted and its value assigned,
 * the setter's checks included. What a class defines is found at its first
 * instance, which warns once: such an instance loses V8's fast properties
 * (the delete), and a field over a getter without a setter (`closed`) hides
 * the real state from the framework too, and is left as it is. Later
 * instances cost one WeakMap lookup.
 * @throws What a setter throws for the field's value (TypeError, RangeError).
 */
export function adoptAccessorFields(instance: object, base: object, baseName: string): void {
  const fields = shadowingFields.get(instance.constructor) ?? findShadowingFields(instance, base, baseName);
  for (let i = 0; i < fields.length; i++) {
    const key = fields[i]!;
    if (!Object.hasOwn(instance, key)) continue; // set already (by an earlier call), or not this instance
    const record = instance as Record<string, unknown>;
    const value = record[key];
    delete record[key];
    record[key] = value;
  }
}

function findShadowingFields(instance: object, base: object, baseName: string): readonly string[] {
  const accessors = accessorsOf(base);
  const settable: string[] = [];
  const hidden: string[] = [];
  for (const key of Object.getOwnPropertyNames(instance)) {
    const canSet = accessors.get(key);
    if (canSet === undefined) continue;
    if (canSet) settable.push(key);
    else hidden.push(key);
  }
  shadowingFields.set(instance.constructor, settable);
  const name = instance.constructor.name === "" ? `an anonymous ${baseName} subclass` : instance.constructor.name;
  warnFields(name, settable, `${baseName}'s setter`, (them, s) =>
    `. pants-ts sets ${them} through the setter${s} for each instance, but the delete this takes can cost the instance V8's fast property access: ` +
    `assign ${them} in the constructor instead (this.${settable[0]} = ...).`,
  );
  warnFields(name, hidden, `${baseName}'s read-only getter`, (them) => ` from pants-ts and from your own code: rename ${them}.`);
  return settable;
}

/**
 * The warning for class `name`'s `fields` that hide `what` (an accessor of
 * its base, named in the singular), then `advice` (given "them"/"it" and
 * the plural "s" or ""); nothing when there are none.
 */
function warnFields(name: string, fields: readonly string[], what: string, advice: (them: string, s: string) => string): void {
  if (fields.length === 0) return;
  const many = fields.length > 1;
  const s = many ? "s" : "";
  log.current.warn({ class: name, fields }, `${name} declares ${fields.join(", ")} as class field${s}, which hide${many ? "" : "s"} ${what}${s}${advice(many ? "them" : "it", s)}`);
}

/** The accessors of `base` and the prototypes it inherits from, by name: true if one can be set. */
function accessorsOf(base: object): ReadonlyMap<string, boolean> {
  let found = accessorsByBase.get(base);
  if (found !== undefined) return found;
  const map = new Map<string, boolean>();
  for (let proto: object | null = base; proto !== null && proto !== Object.prototype; proto = Object.getPrototypeOf(proto) as object | null) {
    for (const key of Object.getOwnPropertyNames(proto)) {
      const d = Object.getOwnPropertyDescriptor(proto, key)!;
      if (d.get === undefined && d.set === undefined) continue;
      if (!map.has(key)) map.set(key, d.set !== undefined); // the nearest definition wins
    }
  }
  found = map;
  accessorsByBase.set(base, found);
  return found;
}
