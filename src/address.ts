/**
 * Address shapes (SPEC §2) to and from Node's listen/connect options.
 */
import { Buffer } from "node:buffer";
import { isIP } from "node:net";
import { networkInterfaces } from "node:os";
import type { AddressInfo } from "node:net";
import { InvalidAddressFormatError, describe } from "./errors.js";

/**
 * An address, in Pants' shapes:
 * - `4040`: every interface, port 4040 (`["", 4040]`);
 * - `"/run/app.sock"`: a UNIX socket path (Linux abstract names start with `"\0"`); a
 *   string node:net would read as a port (`"8080"`) or that reads as host:port
 *   (`"127.0.0.1:8080"`) or as an IP address throws, `"./8080"` is that file;
 * - `["127.0.0.1", 4040]`, `["localhost", 4040]`: IPv4, or a host name resolved asynchronously;
 * - `["::1", 4040]`, `["::1", 4040, 0, 0]`: IPv6;
 * - `["", port]`: every IPv4 interface (and, on a server with `slave`, every IPv6 one);
 * - `["", port, 0, 0]`: every IPv6 interface, dual-stack.
 */
export type Address =
  | number
  | string
  | [host: string, port: number]
  | [host: string, port: number, flowinfo: number, scopeid: number];

/** An address after validation. */
export type ParsedAddress =
  | { readonly kind: "unix"; readonly path: string }
  | {
      readonly kind: "tcp";
      /** The host as given ("" for every interface). */
      readonly host: string;
      readonly port: number;
      /** 4 or 6 for literals and "", 0 for a host name to resolve. */
      readonly family: 0 | 4 | 6;
      /** True when the address was a 4-tuple (IPv6 requested). */
      readonly v6tuple: boolean;
      readonly flowinfo: number;
      readonly scopeid: number;
    };

function isPort(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= 65535;
}

function isUint32(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= 0xffffffff;
}

/** The size of `sockaddr_un.sun_path`: 108 bytes on Linux, 104 on the BSDs and macOS. */
const SUN_PATH_BYTES = process.platform === "linux" ? 108 : 104;

/**
 * Validates an address synchronously.
 * @throws InvalidAddressFormatError for anything of no known shape.
 */
export function parseAddress(address: unknown): ParsedAddress {
  if (typeof address === "number") {
    if (!isPort(address)) {
      throw new InvalidAddressFormatError(`Invalid address: port ${describe(address)} is not an integer from 0 to 65535.`);
    }
    return { kind: "tcp", host: "", port: address, family: 4, v6tuple: false, flowinfo: 0, scopeid: 0 };
  }
  if (typeof address === "string") {
    if (address.length === 0) {
      throw new InvalidAddressFormatError("Invalid address: an empty string is not a UNIX socket path.");
    }
    const abstract = address.charCodeAt(0) === 0;
    // node:net's listen("8080") and connect("8080") take a string it reads
    // as a number for a port; here it would quietly become a socket file in
    // the working directory (process.env.PORT is a string).
    if (!abstract && readsAsPort(address)) {
      throw new InvalidAddressFormatError(
        `Invalid address ${describe(address)}: a string is a UNIX socket path, and this one reads as a port; pass the port as a number (Number(process.env.PORT)), or "./${address}" for a socket file of that name.`,
      );
    }
    // The CLI's HOST:PORT ("127.0.0.1:8080", "[::1]:8080", ":8080") or a
    // bare IP literal would quietly become a socket file of that name too.
    const hostPort = abstract ? null : readsAsHostPort(address);
    if (hostPort !== null) {
      const [what, port] = hostPort.port === null ? ["an IP address", "port"] : ["host:port", String(hostPort.port)];
      throw new InvalidAddressFormatError(
        `Invalid address ${describe(address)}: a string is a UNIX socket path, and this one reads as ${what}; pass [${JSON.stringify(hostPort.host)}, ${port}], or "./${address}" for a socket file of that name.`,
      );
    }
    // The OS reads a file path up to its first NUL: "/run/a.sock\0x" would
    // quietly be "/run/a.sock" (Python raises ValueError for it). Only an
    // abstract name, which has a length, may hold NULs.
    if (!abstract && address.includes("\0")) {
      throw new InvalidAddressFormatError(`Invalid address ${describe(address)}: a UNIX socket path cannot hold a NUL byte (only a Linux abstract name, which starts with one).`);
    }
    // sun_path: a longer path would be cut short by node:net (and refused by the OS elsewhere).
    const bytes = Buffer.byteLength(address) + (abstract ? 0 : 1);
    if (bytes > SUN_PATH_BYTES) {
      throw new InvalidAddressFormatError(
        `Invalid address: a UNIX socket path of ${bytes - (abstract ? 0 : 1)} bytes is longer than the OS takes (${SUN_PATH_BYTES - (abstract ? 0 : 1)}).`,
      );
    }
    return { kind: "unix", path: address };
  }
  if (Array.isArray(address) && (address.length === 2 || address.length === 4)) {
    const [host, port] = address as unknown[];
    if (typeof host !== "string") {
      throw new InvalidAddressFormatError(`Invalid address ${describe(address)}: the host must be a string.`);
    }
    if (!isPort(port)) {
      throw new InvalidAddressFormatError(
        `Invalid address ${describe(address)}: the port must be an integer from 0 to 65535.`,
      );
    }
    if (host.includes("\0")) {
      // The resolver reads a host name up to its first NUL: "a.example\0.b" would quietly be "a.example".
      throw new InvalidAddressFormatError(`Invalid address ${describe(address)}: a host cannot hold a NUL byte.`);
    }
    if (host.startsWith("[") && host.endsWith("]")) {
      // URL notation: no resolver would find "[::1]" (it failed later, as ENOTFOUND).
      throw new InvalidAddressFormatError(
        `Invalid address ${describe(address)}: an IPv6 host is written without brackets, e.g. ["${host.slice(1, -1)}", ${port}].`,
      );
    }
    if (address.length === 4) {
      const [, , flowinfo, scopeid] = address as unknown[];
      if (!isUint32(flowinfo) || !isUint32(scopeid)) {
        throw new InvalidAddressFormatError(
          `Invalid address ${describe(address)}: flowinfo and scopeid must be unsigned 32-bit integers.`,
        );
      }
      const kind = isIP(host);
      if (kind === 4) {
        throw new InvalidAddressFormatError(
          `Invalid address ${describe(address)}: a 4-tuple is an IPv6 address, but ${host} is IPv4.`,
        );
      }
      return { kind: "tcp", host, port, family: host === "" || kind === 6 ? 6 : 0, v6tuple: true, flowinfo, scopeid };
    }
    const kind = isIP(host);
    return { kind: "tcp", host, port, family: host === "" ? 4 : kind === 0 ? 0 : (kind as 4 | 6), v6tuple: false, flowinfo: 0, scopeid: 0 };
  }
  throw new InvalidAddressFormatError(
    `Invalid address ${describe(address)}: expected a port number, a UNIX socket path, [host, port] or [host, port, flowinfo, scopeid].`,
  );
}

/** Converts what Node's `address()`/`remoteAddress` report into Pants' shapes. */
export function fromNodeAddress(ip: string | undefined, port: number | undefined, family: string | number | undefined): Address | null {
  if (ip === undefined || port === undefined) return null;
  const v6 = family === "IPv6" || family === 6 || (family === undefined && ip.includes(":"));
  if (!v6) return [ip, port];
  let scopeid = 0;
  let host = ip;
  const pct = ip.indexOf("%");
  if (pct !== -1) {
    const scope = ip.slice(pct + 1);
    host = ip.slice(0, pct);
    scopeid = scopeIndex(scope);
  }
  return [host, port, 0, scopeid];
}

/**
 * The interface index of an IPv6 zone ("4", or "eth0" as node:net reports
 * link-local addresses): the scope id of the interface's link-local
 * addresses. 0 when unknown.
 */
function scopeIndex(zone: string): number {
  if (/^\d+$/.test(zone)) return Number(zone);
  for (const a of networkInterfaces()[zone] ?? []) if (a.family === "IPv6" && a.scopeid !== undefined && a.scopeid > 0) return a.scopeid;
  return 0;
}

/** Whether node:net would take `text`, given as an address, for a port (`"8080"`, `" 8080"`, `"0x50"`), not a path. */
export function readsAsPort(text: string): boolean {
  return Number(text) >= 0;
}

/**
 * The host and port a string would mean to a user of node:net or of the
 * CLI rather than a path: `"127.0.0.1:8080"`, `"localhost:8080"`,
 * `"[::1]:8080"`, `":8080"` (port `null` for a bare IP literal,
 * `"127.0.0.1"` or `"::1"`); `null` for anything else (a path with a `/`,
 * a name with no port).
 */
export function readsAsHostPort(text: string): { host: string; port: number | null } | null {
  if (isIP(text) !== 0) return { host: text, port: null };
  const m = /^(?:\[([^\]/]*)\]|([^:/[\]]*)):(\d{1,5})$/.exec(text);
  if (m === null) return null;
  return { host: m[1] ?? m[2] ?? "", port: Number(m[3]) };
}

/** The host a connect() to a TCP address goes to: `""` is this host's loopback. */
export function dialHost(target: { readonly host: string; readonly v6tuple: boolean }): string {
  return target.host !== "" ? target.host : target.v6tuple ? "::1" : "127.0.0.1";
}

/**
 * `host` with the zone a 4-tuple's `scopeid` names (`fe80::1` and 4:
 * `fe80::1%eth0`), as node:net and the addon take it: both look a zone up
 * by interface name. Unchanged without a scope id or for anything but an
 * IPv6 literal without a zone.
 */
export function withScope(host: string, scopeid: number): string {
  const zone = /%(\d+)$/.exec(host);
  if (zone !== null) {
    host = host.slice(0, zone.index); // a numeric zone ("%4"): neither takes one on Linux
    scopeid = Number(zone[1]);
  }
  if (scopeid === 0 || host.includes("%") || isIP(host) !== 6) return host;
  for (const [name, list] of Object.entries(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === "IPv6" && a.scopeid === scopeid) return `${host}%${name}`;
  }
  return `${host}%${scopeid}`;
}

/** The address of a listening `net.Server` in Pants' shape. */
export function fromAddressInfo(info: AddressInfo | string | null): Address | null {
  if (info === null) return null;
  if (typeof info === "string") return info;
  return fromNodeAddress(info.address, info.port, info.family);
}

/** A short human form: `127.0.0.1:4040`, `[::1]:4040`, `unix:/path`. */
export function formatAddress(address: Address | null | undefined): string {
  if (address === null || address === undefined) return "(none)";
  if (typeof address === "number") return `*:${address}`;
  if (typeof address === "string") return `unix:${address.replace(/\0/g, "@")}`;
  const [host, port] = address;
  if (host === "") return `${address.length === 4 ? "[::]" : "0.0.0.0"}:${port}`;
  return host.includes(":") ? `[${hostWithZone(address)}]:${port}` : `${host}:${port}`;
}

/**
 * An address's host as one gives it to connect: a link-local IPv6 one with
 * the interface its scope id names ("fe80::1%eth0").
 */
export function hostWithZone(address: [string, number] | [string, number, number, number]): string {
  return address.length === 4 ? withScope(address[0], address[3]) : address[0];
}

/**
 * What an assignment to a `localAddress`/`remoteAddress` override stores:
 * a checked copy, `null` as itself, `undefined` (restore the real one) as is.
 * @throws InvalidAddressFormatError for a value of no address shape.
 */
export function addressOverride(value: Address | null | undefined): Address | null | undefined {
  if (value === undefined || value === null) return value;
  parseAddress(value);
  return copyAddress(value);
}

/** Copies an address so callers cannot mutate internal state. */
export function copyAddress(address: Address | null): Address | null {
  return Array.isArray(address) ? (address.slice() as Address) : address;
}

/** A client's source address, checked: an address literal ("" for any of the target's family) and a port. */
export interface LocalAddress {
  readonly host: string;
  readonly port: number;
  /** 4 or 6 for a literal, 0 for "" (the target's family). */
  readonly family: 0 | 4 | 6;
}

/**
 * `Stream.connect`'s `localAddress`: an IP literal and port (`["10.0.0.5", 0]`,
 * `["::1", 0, 0, 0]`) or a port alone (any local address), for a TCP target
 * of the same family.
 * @throws InvalidAddressFormatError for any other shape, a host name, a UNIX
 * path, a UNIX target, or a literal of the other family than the target's.
 */
export function parseLocalAddress(value: unknown, target: ParsedAddress): LocalAddress {
  const local = parseAddress(value);
  const what = `Invalid localAddress ${describe(value)}`;
  if (target.kind === "unix") throw new InvalidAddressFormatError(`${what}: a connect to a UNIX socket path has no local address to bind.`);
  if (local.kind === "unix") throw new InvalidAddressFormatError(`${what}: a TCP connect is bound to an IP address and port, not a UNIX socket path.`);
  // "" in a 4-tuple is any IPv6 address ("::"): held to the target's family as a literal is.
  const family = local.host === "" ? (local.v6tuple ? 6 : 0) : isIP(local.host.replace(/%.*$/, ""));
  if (local.host !== "" && family !== 4 && family !== 6) {
    throw new InvalidAddressFormatError(`${what}: the local address must be an IP address literal, not a host name (it is bound before the connect, with no lookup; node:net refuses one too).`);
  }
  // Checked whole, zone too, as both transports read it: else the bind threw a TypeError with the stream left connecting.
  if (local.host !== "" && isIP(local.host) !== family) {
    throw new InvalidAddressFormatError(`${what}: only an IPv6 address takes a zone, and it names an interface ("fe80::1%eth0").`);
  }
  if (family === 0) return { host: "", port: local.port, family }; // any address of the target's family
  // A host name in a 4-tuple asks for IPv6 (its lookup asks for IPv6 only).
  const targetFamily = target.host === "" ? (target.v6tuple ? 6 : 4) : target.family !== 0 ? target.family : target.v6tuple ? 6 : 0;
  if (targetFamily !== 0 && targetFamily !== family) {
    throw new InvalidAddressFormatError(`${what}: an IPv${family} local address cannot reach the IPv${targetFamily} address ${describe(dialHost(target))}.`);
  }
  return { host: local.host === "" ? "::" : withScope(local.host, local.scopeid), port: local.port, family: family === 4 ? 4 : 6 };
}
