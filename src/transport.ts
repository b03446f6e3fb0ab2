/**
 * Which transport a server or client stream uses: the native libuv addon
 * when it is built (fastest), else node:net. TLS, PROXY headers and
 * cluster workers always use node:net (node:tls and the cluster's shared
 * handles need it).
 */
import cluster from "node:cluster";
import { log } from "./log.js";
import { nativeLoadError } from "./native-binding.js";
import { nativeAddon } from "./native-socket.js";
import { codedError, describe, typeError } from "./errors.js";

/** `"native"`: the libuv addon; `"js"`: node:net. */
export type Transport = "native" | "js";

let explained = false;

/** Validates a `transport` option. */
export function checkTransport(value: unknown): Transport | undefined {
  if (value === undefined) return undefined;
  if (value !== "native" && value !== "js") throw typeError(`The transport option must be "native" or "js", got ${describe(value)}.`);
  return value;
}

/**
 * True when a plain (no TLS, no PROXY) server or client should use the
 * native transport: the option, else `PANTS_TS_TRANSPORT`, else the addon
 * if it is built; in a cluster worker, only for a server with a socket of
 * its own (`ownSocket`: bound with `reusePort`, or a descriptor it was handed).
 * @throws Error when "native" is asked for explicitly and the addon is not available.
 */
export function useNative(option: Transport | undefined, ownSocket = false): boolean {
  const wanted = option ?? envTransport();
  // A cluster worker's node:net server shares the primary's socket; the
  // addon's would bind its own, which only SO_REUSEPORT lets it share.
  if (wanted === "js" || (cluster.isWorker && !ownSocket)) return false;
  const available = nativeAddon() !== null;
  if (!available && wanted === "native") {
    throw codedError(`The native transport was asked for, but ${nativeLoadError() ?? "it is not available"}.`, "ERR_NATIVE_UNAVAILABLE");
  }
  if (!available && !explained) {
    explained = true;
    if (log.debugOn()) log.current.debug(`Using the JS transport: ${nativeLoadError() ?? "the native addon is not available"}.`);
  }
  return available;
}

/**
 * Whether node:net's `listen()` takes `reusePort` (Node 22.12+ and 23.1+;
 * older releases ignore the option without a word), so that a node:net
 * server needs no addon for SO_REUSEPORT, in a cluster worker too (there
 * node:net takes `reusePort` as `exclusive`: the worker binds the socket
 * itself, and the primary hears nothing of it).
 */
export const netListensReusePort: boolean = ((): boolean => {
  const [major = 0, minor = 0] = process.versions.node.split(".").map(Number);
  return major > 23 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
})();

function envTransport(): Transport | undefined {
  const value = process.env.PANTS_TS_TRANSPORT;
  return value === "native" || value === "js" ? value : undefined;
}
