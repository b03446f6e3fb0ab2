/**
 * SslOptions, in Pants' names and Node's, to secure contexts. A server
 * reads its files and builds its contexts once per startSSL/setSslOptions,
 * never per connection. A stream's own TLS (a client, a STARTTLS upgrade)
 * reads its files at each startSSL and shares the context of earlier ones
 * with the same contents (see {@link sharedContext}).
 */
import { Buffer } from "node:buffer";
import { X509Certificate, createHash, createPrivateKey } from "node:crypto";
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import tls from "node:tls";
import type { ConnectionOptions, SecureContext, SecureContextOptions, TlsOptions, TLSSocket, TLSSocketOptions } from "node:tls";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { asError, describe, rangeError, typeError } from "./errors.js";
import { checkSslOptionKeys } from "./options.js";

/** Pants' (Python `ssl`) certificate requirement names. */
export type CertReqs = "CERT_NONE" | "CERT_OPTIONAL" | "CERT_REQUIRED";

/**
 * The certificate material of one host name, for {@link SslOptions.sni}.
 * The server's own settings (`minVersion`, `ciphers`, session tickets and
 * timeout, ALPN) hold for every host name: an entry brings its certificate,
 * key and client CAs only.
 */
export interface SniEntry {
  /** The private key (PEM), as in Node's `tls.createSecureContext`. */
  key?: SecureContextOptions["key"];
  /** The certificate chain (PEM). */
  cert?: SecureContextOptions["cert"];
  /** A PKCS#12 bundle of key and certificate, instead of `key`/`cert`. */
  pfx?: SecureContextOptions["pfx"];
  /** The passphrase of `key` or `pfx`. */
  passphrase?: string;
  /** CA certificates to verify client certificates of this host name with. */
  ca?: SecureContextOptions["ca"];
  /** The certificate chain as a PEM file path, read once. */
  certfile?: string;
  /** The private key as a PEM file path, read once (default: the key in `certfile`, if it holds one). */
  keyfile?: string;
}

/**
 * TLS options: Node's `tls` server and client options, plus Pants' names
 * (`certfile`, `keyfile`, `ca_certs`, `cert_reqs`, `server_side`,
 * `do_handshake_on_connect`) and `sni`, a map from host name to
 * certificate. A key within two edits of one of pants-ts's own names
 * (`certFile`, `serverSide`) is logged once as a likely misspelling (a
 * `warn`); node:tls's own keys are passed on unread and never reported.
 */
export interface SslOptions extends SecureContextOptions {
  /** PEM file with the certificate chain (Pants' name; read once). May also hold the key. */
  certfile?: string;
  /** PEM file with the private key (Pants' name; read once). Defaults to `certfile`'s key if it holds one. */
  keyfile?: string;
  /** PEM file with the CA certificates to trust (Pants' name; read once), beside those of `ca` if both are given. */
  ca_certs?: string;
  /** Peer certificate requirement (Pants' name). Client default: verify; server default: no client certificate. When given, it decides over `requestCert` and `rejectUnauthorized`. */
  cert_reqs?: CertReqs;
  /** Must be true on a server (default); on a stream it picks the TLS role. */
  server_side?: boolean;
  /** Must be false (the default): the handshake is driven by the engine. */
  do_handshake_on_connect?: boolean;
  /** Server: ask clients for a certificate. */
  requestCert?: boolean;
  /** Server: refuse clients without a valid certificate (with `requestCert`). Client: refuse servers without one (default true). */
  rejectUnauthorized?: boolean;
  /** ALPN protocols, in order of preference. */
  ALPNProtocols?: string[] | Uint8Array;
  /** Server: picks the ALPN protocol from the client's list (return one of them, or undefined to refuse the handshake); instead of `ALPNProtocols`. */
  ALPNCallback?: TLSSocketOptions["ALPNCallback"];
  /**
   * TLS-PSK, as in node:tls. Server: `(socket, identity)` returns the key
   * for that identity, or null to refuse (with a PSK cipher, no certificate
   * is needed). Client: `(hint)` returns `{ psk, identity }`.
   */
  pskCallback?: TlsOptions["pskCallback"] | ConnectionOptions["pskCallback"];
  /** Server: the identity hint sent to PSK clients (with `pskCallback`). */
  pskIdentityHint?: string;
  /** Write a trace of each connection's TLS messages to stderr, as node:tls does (null: as not given). */
  enableTrace?: boolean;
  /** Server: picks a secure context per SNI host name. */
  SNICallback?: (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void) => void;
  /** Server: certificates by SNI host name (`"*.example.com"` wildcards allowed; names match without case or a trailing dot); the top-level certificate is the default. */
  sni?: Record<string, SniEntry>;
  /** Client: the host name to send in SNI and verify (default: the host connected to, unless it is an IP), without an absolute name's trailing dot (null: as not given). An IP address is verified but not sent: SNI carries names only. */
  servername?: string;
  /** Client: replaces Node's host-name check; an Error it returns or throws fails the handshake. */
  checkServerIdentity?: ConnectionOptions["checkServerIdentity"];
  /** Client: a session to resume (null or undefined: none, so `sslSession ?? undefined` and `sslSession` both fit). */
  session?: Buffer | null | undefined;
}

/** @internal A compiled server-side configuration: what each accepted TLSSocket gets. */
export interface ServerTls {
  readonly socketOptions: TLSSocketOptions;
  /**
   * How a client certificate is checked once the handshake is done:
   * `required` (CERT_REQUIRED, or requestCert with rejectUnauthorized) and
   * `optional` (CERT_OPTIONAL, as Python: verified when one is sent) fail
   * the handshake on a certificate that does not verify; `request` (Node's
   * requestCert alone) only sets `authorized`.
   */
  readonly verify: "none" | "request" | "optional" | "required";
}

/** @internal A compiled client-side configuration. */
export interface ClientTls {
  readonly options: ConnectionOptions;
  /** An IP address given as `servername`: verified against, never sent (SNI carries host names only). */
  readonly verifyIp?: string;
}

/** @internal Either side's compiled configuration, as validated when given. */
export type CompiledTls = { readonly serverSide: true; readonly config: ServerTls } | { readonly serverSide: false; readonly config: ClientTls };

/**
 * @internal Compiles TLS options for one side, once, when they are given (a
 * bad one throws there: a file that cannot be read is named); the wrap later uses the result.
 */
export function compileTls(options: SslOptions, serverSide: boolean): CompiledTls {
  return serverSide ? { serverSide, config: compileServerTls(options, true) } : { serverSide, config: compileClientTls(options) };
}

const PANTS_KEYS = new Set(["certfile", "keyfile", "ca_certs", "cert_reqs", "server_side", "do_handshake_on_connect", "sni"]);

/**
 * The SSL option `name` when of `type`; undefined when not given, or null
 * where node:tls takes null as none (`nullIsNone`).
 * @throws TypeError naming the option otherwise.
 */
function optionOf(options: SslOptions, name: string, type: "function" | "boolean" | "string", nullIsNone = true): unknown {
  const value = (options as Record<string, unknown>)[name];
  if (value === undefined || (value === null && nullIsNone)) return undefined;
  if (typeof value !== type) throw typeError(`SSL option '${name}' must be a ${type}, got ${describe(value)}.`, "ERR_INVALID_ARG_TYPE");
  return value;
}

/**
 * A user-built `secureContext` is refused (server and client): pants-ts
 * builds its own from the other options (with the session ID context a
 * server needs, the trusted CAs of both `ca` and `ca_certs`), and dropped
 * the given one silently.
 */
function refuseSecureContext(options: SslOptions): void {
  if ((options as Record<string, unknown>).secureContext != null) {
    throw typeError(
      "SSL option 'secureContext' is not taken: pants-ts builds the secure context itself. Give its options instead (key/cert, certfile/keyfile or pfx, ca, ciphers, ...); a server picks a context per host name with sni or an SNICallback.",
      "ERR_INVALID_ARG_VALUE",
    );
  }
}

/** @internal The bytes of the file an SSL option names; an error that names the option and the file. */
export function readFile(option: string, path: unknown): Buffer {
  if (typeof path !== "string" || path.length === 0) {
    throw typeError(`The SSL option ${option} must be a file path, got ${describe(path)}.`);
  }
  try {
    return readFileSync(path);
  } catch (err) {
    const e = new Error(`Cannot read the SSL option ${option} file ${JSON.stringify(path)}: ${(err as Error).message}`, {
      cause: err,
    }) as Error & { code?: string; path?: string };
    e.code = (err as NodeJS.ErrnoException).code ?? "ERR_SSL_FILE";
    e.path = path;
    throw e;
  }
}

/** @internal Validates the Pants-only flags shared by servers and streams. */
export function checkPantsFlags(options: SslOptions, serverSide: boolean | undefined): void {
  if (options === null || typeof options !== "object") {
    throw typeError(`SSL options must be an object, got ${describe(options)}.`);
  }
  checkSslOptionKeys("the SSL options", options);
  if (options.do_handshake_on_connect !== undefined && options.do_handshake_on_connect !== false) {
    throw rangeError("SSL option 'do_handshake_on_connect' must be false.", "ERR_INVALID_ARG_VALUE");
  }
  if (serverSide === true && options.server_side !== undefined && options.server_side !== true) {
    throw rangeError("SSL option 'server_side' must be true.", "ERR_INVALID_ARG_VALUE");
  }
  if (options.server_side !== undefined && typeof options.server_side !== "boolean") {
    throw typeError(`SSL option 'server_side' must be a boolean, got ${describe(options.server_side)}.`);
  }
  if (options.cert_reqs !== undefined && !["CERT_NONE", "CERT_OPTIONAL", "CERT_REQUIRED"].includes(options.cert_reqs)) {
    throw rangeError(
      `SSL option 'cert_reqs' must be "CERT_NONE", "CERT_OPTIONAL" or "CERT_REQUIRED", got ${describe(options.cert_reqs)}.`,
      "ERR_INVALID_ARG_VALUE",
    );
  }
}

/** Node secure-context options from Pants' and Node's names, with files read. */
function contextOptions(options: SslOptions | SniEntry, withCa: boolean): SecureContextOptions {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(options)) {
    if (!PANTS_KEYS.has(key) && value !== undefined) out[key] = value;
  }
  const o = options as SslOptions;
  if (o.certfile !== undefined) {
    const pem = readFile("certfile", o.certfile);
    if (out.cert === undefined) out.cert = pem;
    // Pants' fixtures put key and certificate in one file.
    if (o.keyfile === undefined && out.key === undefined && /-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(pem.toString("latin1"))) {
      out.key = pem;
    }
  }
  if (o.keyfile !== undefined) out.key = readFile("keyfile", o.keyfile);
  if (withCa && o.ca_certs !== undefined) {
    // Beside Node's `ca`, the file's CAs are trusted too: both were given.
    const file = readFile("ca_certs", o.ca_certs);
    out.ca = out.ca == null ? file : [...[out.ca as NonNullable<SecureContextOptions["ca"]>].flat(), file];
  }
  if (out.minVersion === undefined) out.minVersion = "TLSv1.2";
  return out as SecureContextOptions;
}

/** `shared`: a stream's context, taken from {@link sharedContext} when one with the same options was built before. */
function createContext(what: string, options: SecureContextOptions, shared: boolean, given?: SslOptions | SniEntry): SecureContext {
  const key = shared ? contextKey(options) : null;
  if (key !== null) {
    const hit = sharedContexts.get(key);
    if (hit !== undefined) {
      // Most recently used last.
      sharedContexts.delete(key);
      sharedContexts.set(key, hit);
      return hit;
    }
  }
  let context: SecureContext;
  try {
    context = tls.createSecureContext(options);
  } catch (err) {
    const why = given === undefined ? null : contextFailure(options, given, err as NodeJS.ErrnoException);
    const e = new Error(`Invalid ${what}: ${why === null ? (err as Error).message : `${why} (${(err as Error).message})`}`, { cause: err }) as Error & { code?: string };
    e.code = (err as NodeJS.ErrnoException).code ?? "ERR_SSL_CONTEXT";
    throw e;
  }
  if (key !== null) {
    sharedContexts.set(key, context);
    if (sharedContexts.size > SHARED_CONTEXTS) sharedContexts.delete(sharedContexts.keys().next().value as string);
  }
  return context;
}

/**
 * What OpenSSL refused in a context, said of the option at fault: its own
 * messages ("DECODER routines::unsupported", "PEM routines::no start
 * line") name neither the option nor the file. Null when it cannot be told.
 * Runs only once a context has failed.
 */
function contextFailure(options: SecureContextOptions, given: SslOptions | SniEntry, err: NodeJS.ErrnoException): string | null {
  const o = given as SslOptions;
  const certName = o.cert === undefined && typeof o.certfile === "string" ? `certfile ${describe(o.certfile)}` : "the SSL option cert";
  const keyName =
    o.key !== undefined ? "the SSL option key" : typeof o.keyfile === "string" ? `keyfile ${describe(o.keyfile)}` : typeof o.certfile === "string" ? `certfile ${describe(o.certfile)}` : "the SSL option key";
  const { key, cert, passphrase } = options;
  if (typeof key === "string" || key instanceof Uint8Array) {
    const pem = Buffer.from(key);
    try {
      createPrivateKey(passphrase === undefined ? { key: pem } : { key: pem, passphrase });
    } catch (keyErr) {
      const code = (keyErr as NodeJS.ErrnoException).code;
      if (code === "ERR_OSSL_BAD_DECRYPT" || /-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(pem.toString("latin1"))) {
        return `the private key in ${keyName} is encrypted, and ${passphrase === undefined ? "no passphrase was given (SSL option passphrase)" : "the passphrase given does not open it"}`;
      }
      return `${keyName} holds no private key OpenSSL can read (a PEM "-----BEGIN ... PRIVATE KEY-----" block)`;
    }
  }
  if (typeof cert === "string" || cert instanceof Uint8Array) {
    try {
      new X509Certificate(cert);
    } catch {
      return `${certName} holds no certificate OpenSSL can read (a PEM "-----BEGIN CERTIFICATE-----" block)`;
    }
  }
  if (err.code === "ERR_OSSL_X509_KEY_VALUES_MISMATCH") return `the private key in ${keyName} is not the key of the certificate in ${certName}`;
  return null;
}

/**
 * The secure contexts of streams' own TLS (clients, STARTTLS upgrades), by
 * the exact options they were built from, files' contents included: a
 * context costs a few hundred microseconds to build (a server's key and
 * certificate, about 0.6 ms), as much as the handshake it serves, and a
 * shared one also resumes the sessions of the others (its ticket keys).
 * New file contents, or any other option, make a new context. The least
 * recently used goes past {@link SHARED_CONTEXTS}.
 */
const sharedContexts = new Map<string, SecureContext>();
const SHARED_CONTEXTS = 32;

/** Options given with the context's that each connection takes for itself: not part of the context, nor of its key. */
const CONNECTION_KEYS = new Set(["servername", "session", "checkServerIdentity", "ALPNProtocols", "ALPNCallback", "requestCert", "rejectUnauthorized", "SNICallback", "pskCallback", "pskIdentityHint", "enableTrace"]);

/** The cache key of context options, or null when one of them is not plain data (a function, an object). */
function contextKey(options: SecureContextOptions): string | null {
  const parts: unknown[] = [];
  for (const name of Object.keys(options).sort()) {
    if (CONNECTION_KEYS.has(name)) continue;
    const value = plainValue((options as Record<string, unknown>)[name]);
    if (value === null) return null;
    parts.push(name, value);
  }
  return JSON.stringify(parts);
}

function plainValue(value: unknown): unknown {
  if (value === undefined || typeof value === "string" || typeof value === "number" || typeof value === "boolean") return [typeof value, value ?? 0];
  if (value instanceof Uint8Array) return ["bytes", Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("latin1")];
  if (Array.isArray(value)) {
    const items = value.map(plainValue);
    return items.includes(null) ? null : ["array", items];
  }
  return null;
}

/**
 * A host name without the trailing dot of an absolute name (`a.test.` is
 * `a.test`): RFC 6066 leaves it out of SNI, and node:tls verifies the
 * certificate of `a.test` for either.
 */
function relativeName(name: string): string {
  return name.length > 1 && name.endsWith(".") ? name.slice(0, -1) : name;
}

/** A host name as the sni map compares it: without case or a trailing dot (other clients send `a.test.` as given). */
function hostKey(name: string): string {
  return relativeName(name.toLowerCase());
}

function wildcardMatch(pattern: string, host: string): boolean {
  if (pattern === host) return true;
  if (!pattern.startsWith("*.")) return false;
  const suffix = pattern.slice(1);
  return host.endsWith(suffix) && !host.slice(0, host.length - suffix.length).includes(".");
}

/**
 * @internal Builds the server-side configuration once: reads files, creates the
 * secure context(s), and validates everything.
 * @throws TypeError, RangeError, an Error naming a file that cannot be read, or one with OpenSSL's code for what cannot be used.
 */
export function compileServerTls(options: SslOptions, shared = false): ServerTls {
  checkPantsFlags(options, true);
  refuseSecureContext(options);
  refuseElsewhere(options, SERVER_ELSEWHERE, "server");
  const base = contextOptions(options, true);
  const psk = compileServerPsk(options);
  // A PSK server may have no certificate (with PSK ciphers only).
  if (base.key === undefined && base.pfx === undefined && psk === null) {
    throw typeError("A TLS server needs a certificate and key: give certfile/keyfile, key/cert or pfx (or a pskCallback).", "ERR_MISSING_OPTION");
  }
  let requestCert = options.requestCert ?? false;
  let rejectUnauthorized = options.rejectUnauthorized ?? requestCert;
  if (options.cert_reqs === "CERT_OPTIONAL") {
    requestCert = true;
    rejectUnauthorized = false;
  } else if (options.cert_reqs === "CERT_REQUIRED") {
    requestCert = true;
    rejectUnauthorized = true;
  } else if (options.cert_reqs === "CERT_NONE") {
    requestCert = false;
    rejectUnauthorized = false;
  }
  const verify = !requestCert ? "none" : rejectUnauthorized ? "required" : options.cert_reqs === "CERT_OPTIONAL" ? "optional" : "request";
  base.sessionIdContext ??= sessionIdContext(verify, base.ca);
  // As tls.createServer: sessions resume for 5 minutes (OpenSSL's own default is 2 hours).
  base.sessionTimeout ??= 300;
  // As tls.createServer: the server's cipher order decides, not the client's.
  base.honorCipherOrder ??= true;
  const secureContext = createContext("TLS server certificate, key or settings", base, shared, options);
  const alpn = compileAlpn(options.ALPNProtocols);
  const alpnCallback = optionOf(options, "ALPNCallback", "function");
  // As tls.createServer: the server picks by one or the other.
  if (alpnCallback !== undefined && alpn !== undefined) throw typeError("Give either ALPNProtocols or an ALPNCallback, not both.", "ERR_TLS_ALPN_CALLBACK_WITH_PROTOCOLS");
  optionOf(options, "SNICallback", "function", false);
  if (options.sni !== undefined) {
    const sni: unknown = options.sni;
    if (sni === null || typeof sni !== "object" || Array.isArray(sni) || Object.values(sni).some((e) => e === null || typeof e !== "object")) {
      throw typeError(`SSL option 'sni' must map host names to certificate options, got ${describe(sni)}.`, "ERR_INVALID_ARG_TYPE");
    }
  }
  let SNICallback = options.SNICallback;
  if (options.sni !== undefined) {
    if (SNICallback !== undefined) throw typeError("Give either the sni map or an SNICallback, not both.", "ERR_INVALID_ARG_VALUE");
    const contexts: Array<[string, SecureContext]> = [];
    for (const [name, entry] of Object.entries(options.sni)) {
      checkSslOptionKeys(`the sni entry for ${JSON.stringify(name)}`, entry); // a misspelt certFile would leave the name on the default certificate
      const ctxOptions = { ...contextOptions(entry, false) };
      if (ctxOptions.ca === undefined && base.ca !== undefined) ctxOptions.ca = base.ca;
      contexts.push([hostKey(name), createContext(`TLS certificate for SNI name ${name}`, ctxOptions, shared, entry)]);
    }
    SNICallback = (servername, cb) => {
      const host = hostKey(servername);
      for (const [pattern, ctx] of contexts) {
        if (wildcardMatch(pattern, host)) return cb(null, ctx);
      }
      cb(null, secureContext);
    };
  }
  const socketOptions: TLSSocketOptions = { isServer: true, secureContext, requestCert, rejectUnauthorized };
  if (alpn !== undefined) socketOptions.ALPNProtocols = alpn;
  if (alpnCallback !== undefined) socketOptions.ALPNCallback = alpnCallback as NonNullable<TLSSocketOptions["ALPNCallback"]>;
  if (SNICallback !== undefined) socketOptions.SNICallback = SNICallback;
  if (psk !== null) Object.assign(socketOptions, psk);
  const enableTrace = optionOf(options, "enableTrace", "boolean");
  if (enableTrace !== undefined) socketOptions.enableTrace = enableTrace as boolean;
  return { socketOptions, verify };
}

/** A server's pskCallback and pskIdentityHint, checked (null is none, as in node:tls), or null when not given. */
function compileServerPsk(options: SslOptions): Pick<TlsOptions, "pskCallback" | "pskIdentityHint"> | null {
  const pskIdentityHint = optionOf(options, "pskIdentityHint", "string");
  const pskCallback = optionOf(options, "pskCallback", "function");
  if (pskCallback === undefined) {
    if (pskIdentityHint !== undefined) throw typeError("SSL option 'pskIdentityHint' needs a pskCallback.", "ERR_MISSING_OPTION");
    return null;
  }
  const out: Pick<TlsOptions, "pskCallback" | "pskIdentityHint"> = { pskCallback: pskCallback as TlsOptions["pskCallback"] };
  if (typeof pskIdentityHint === "string" && pskIdentityHint !== "") out.pskIdentityHint = pskIdentityHint;
  return out;
}

/**
 * Options of tls.createServer (its own, and its net.Server's) that pants-ts
 * takes elsewhere, refused on a server rather than dropped: tls.createServer
 * gives them to its net.Server or its own timer, not to the TLS layer
 * pants-ts builds. null is none.
 */
const SERVER_ELSEWHERE: Readonly<Record<string, string>> = {
  handshakeTimeout: "give the Server option handshakeTimeoutMs (a stream's own upgrade: its handshakeTimeout)",
  highWaterMark: "pants-ts buffers a connection's reads and writes itself (see a stream's writeBufferLimit)",
  signal: "close the server with close() or shutdown()",
  allowHalfOpen: "every stream is half-open already (a peer's FIN calls onEnd, and replies still go out)",
  noDelay: "give the Server option noDelay",
  keepAlive: "give the Server option keepAliveMs",
  keepAliveInitialDelay: "give the Server option keepAliveMs",
  pauseOnConnect: "call pauseReading() in onConnect, or hold the socket in an async onAccept",
};

/** Refuses an option of `elsewhere` (by name, what to use instead) given on this `side`. */
function refuseElsewhere(options: SslOptions, elsewhere: Readonly<Record<string, string>>, side: "server" | "client"): void {
  for (const [name, instead] of Object.entries(elsewhere)) {
    if ((options as Record<string, unknown>)[name] != null) {
      throw typeError(`SSL option '${name}' is not taken by a TLS ${side}: ${instead}.`, "ERR_INVALID_ARG_VALUE");
    }
  }
}

/**
 * The session ID context of a server's secure contexts, unless one is given.
 * A server that asks for client certificates and has none refuses, with an
 * internal-error alert, every client that offers a session to resume
 * (OpenSSL's "session id context uninitialized"; tls.Server sets one, a bare
 * TLSSocket's context has none). Made from how client certificates are
 * checked, so a session resumes only under the same check (servers sharing
 * ticketKeys but trusting other CAs do not resume each other's), and is the
 * same in every worker of a cluster.
 */
function sessionIdContext(verify: ServerTls["verify"], ca: SecureContextOptions["ca"]): string {
  const hash = createHash("sha256").update(verify);
  for (const pem of [ca ?? []].flat()) hash.update(pem);
  return hash.digest("hex").slice(0, 32);
}

/**
 * @internal Builds the client-side configuration once. The server certificate and
 * host name are verified unless `cert_reqs: "CERT_NONE"` or (without
 * `cert_reqs`) `rejectUnauthorized: false`.
 */
export function compileClientTls(options: SslOptions): ClientTls {
  checkPantsFlags(options, undefined);
  refuseSecureContext(options);
  checkConnectionOptions(options);
  const alpn = compileAlpn(options.ALPNProtocols);
  const ctx = contextOptions(options, true);
  const out: ConnectionOptions = { ...(ctx as ConnectionOptions) };
  // node:tls checks these only once it has taken the socket over, too late
  // to fail cleanly: the socket it leaves behind raised an unhandled 'error'.
  // null is none, as node:tls takes it (a JS caller's "no session yet").
  const servername = optionOf(options, "servername", "string");
  const session: unknown = options.session;
  if (session != null && !(session instanceof Uint8Array)) {
    throw typeError(`SSL option 'session' must be a Buffer, got ${describe(session)}.`, "ERR_INVALID_ARG_TYPE");
  }
  // null is none: not passed on (node:net checks keepAliveInitialDelay's
  // type from Node 24.22 on, and refuses null there).
  for (const [name, value] of Object.entries(out)) if (value === null) delete (out as Record<string, unknown>)[name];
  // The checked forms replace what the spread copied (a null one is dropped).
  delete out.servername;
  delete out.session;
  // Sent in SNI, and verified, as a name derived from the host is (sniName).
  // An IP address is verified only: RFC 6066 lets SNI carry host names, no
  // literal addresses, and node:tls sends one with a DEP0123 warning.
  const verifyIp = typeof servername === "string" && isIP(servername) !== 0 ? servername : undefined;
  if (typeof servername === "string" && verifyIp === undefined) out.servername = relativeName(servername);
  if (session != null) out.session = session as Buffer;
  if (alpn !== undefined) out.ALPNProtocols = alpn;
  // null stays a TypeError: node:tls refuses it too.
  const check = optionOf(options, "checkServerIdentity", "function", false);
  if (check !== undefined) {
    // node:tls calls it from its handshake callback, where a throw would be
    // an uncaught exception: what it throws fails this handshake instead.
    const identity = check as NonNullable<ConnectionOptions["checkServerIdentity"]>;
    out.checkServerIdentity = (host, cert) => {
      let result: unknown;
      try {
        result = identity(host, cert);
      } catch (err) {
        return asError(err, "checkServerIdentity");
      }
      // node:tls fails the handshake on any truthy value and passes that
      // value on as the error itself: onSslHandshakeError would get a string.
      if (result instanceof Error) return result;
      if (!result) return undefined; // node:tls accepts any falsy value too
      return new Error(`checkServerIdentity returned ${describe(result)}, not an Error or undefined.`, { cause: result });
    };
  }
  // cert_reqs, when given, decides, as on a server: "CERT_REQUIRED" with
  // rejectUnauthorized: false still verifies (Python: on a client
  // CERT_OPTIONAL verifies too, the server always sends a certificate).
  out.rejectUnauthorized = options.cert_reqs !== undefined ? options.cert_reqs !== "CERT_NONE" : (options.rejectUnauthorized ?? true);
  out.secureContext = createContext("TLS client options", ctx, true, options);
  return verifyIp === undefined ? { options: out } : { options: out, verifyIp };
}

/**
 * Options of tls.connect (its own, and its net.Socket's) that pants-ts takes
 * elsewhere, refused on a client rather than dropped: a stream connects its
 * own socket, so tls.connect ignored them, or (`host` over a UNIX path)
 * verified the certificate against a name no SNI carried. null is none.
 */
const CLIENT_ELSEWHERE: Readonly<Record<string, string>> = {
  host: "give the address to connect(), and servername for the name to send in SNI and verify",
  port: "give the address to connect()",
  path: "give the address to connect()",
  socket: "give it as the Stream option socket, then call startSSL()",
  timeout: "set the stream's idleTimeout",
  noDelay: "call the stream's setNoDelay() (on by default)",
  keepAlive: "call the stream's setKeepAlive()",
  keepAliveInitialDelay: "call the stream's setKeepAlive()",
  allowHalfOpen: "every stream is half-open already (a peer's FIN calls onEnd, and replies still go out)",
  localAddress: "give it to connect(address, { localAddress: [ip, port] })",
  localPort: "give it to connect(address, { localAddress: [ip, port] }) (a port alone: { localAddress: port })",
  family: "connect() picks the family from the address (an IPv6 literal, or a 4-tuple, is IPv6)",
  hints: "connect() resolves host names itself",
  lookup: "connect() resolves host names itself",
  autoSelectFamily: "connect() resolves host names itself",
  autoSelectFamilyAttemptTimeout: "connect() resolves host names itself",
  onread: "set the stream's reuseReadBuffer",
};

/**
 * Node's client options that node:tls checks only in `tls.connect`, once the
 * connection is up: a wrong one failed that connect late, or (highWaterMark,
 * refused once node:tls had taken the socket over) left a half-made
 * TLSSocket on it whose close threw an uncaught TypeError. null is none
 * where node:tls takes it so.
 */
function checkConnectionOptions(options: SslOptions): void {
  refuseElsewhere(options, CLIENT_ELSEWHERE, "client");
  optionOf(options, "pskCallback", "function");
  optionOf(options, "enableTrace", "boolean");
  const { signal, highWaterMark, minDHSize } = options as Record<string, unknown>;
  if (signal != null && !(signal instanceof AbortSignal)) throw typeError(`SSL option 'signal' must be an AbortSignal, got ${describe(signal)}.`);
  if (highWaterMark != null) {
    if (typeof highWaterMark !== "number") throw typeError(`SSL option 'highWaterMark' must be a number, got ${describe(highWaterMark)}.`);
    if (!Number.isInteger(highWaterMark) || highWaterMark < 0) {
      throw rangeError(`SSL option 'highWaterMark' must be a whole number of bytes, got ${highWaterMark}.`, "ERR_INVALID_ARG_VALUE");
    }
  }
  if (minDHSize !== undefined) {
    if (typeof minDHSize !== "number") throw typeError(`SSL option 'minDHSize' must be a number, got ${describe(minDHSize)}.`);
    if (!(minDHSize > 0)) throw rangeError(`SSL option 'minDHSize' must be a positive number of bits, got ${minDHSize}.`, "ERR_INVALID_ARG_VALUE");
  }
}

/**
 * ALPNProtocols in the wire form node:tls takes as is (each name after its
 * length byte), from protocol names (strings or bytes) or that form itself,
 * made once. Each name must be 1 to 255 bytes (RFC 7301): node:tls checks
 * only the upper bound, per connection, refuses names given as bytes there,
 * and a client's empty or malformed list aborted the process (OpenSSL
 * refuses it and Node asserts that it cannot).
 */
function compileAlpn(value: unknown): Buffer | undefined {
  if (value === undefined) return undefined;
  const ok = Array.isArray(value) ? value.every((p) => typeof p === "string" || p instanceof Uint8Array) : value instanceof Uint8Array;
  if (!ok) throw typeError(`SSL option 'ALPNProtocols' must be an array of protocol names, got ${describe(value)}.`, "ERR_INVALID_ARG_TYPE");
  if (Array.isArray(value)) {
    const parts: Buffer[] = [];
    for (const [i, name] of (value as Array<string | Uint8Array>).entries()) {
      const bytes = typeof name === "string" ? Buffer.from(name, "utf8") : Buffer.from(name.buffer, name.byteOffset, name.byteLength);
      if (bytes.length === 0 || bytes.length > 255) {
        throw rangeError(`SSL option 'ALPNProtocols' must hold names of 1 to 255 bytes, got ${bytes.length} bytes at index ${i}.`, "ERR_INVALID_ARG_VALUE");
      }
      parts.push(Buffer.of(bytes.length), bytes);
    }
    return Buffer.concat(parts);
  }
  const wire = value as Uint8Array;
  for (let at = 0; at < wire.length; at += 1 + wire[at]!) {
    if (wire[at] === 0 || at + 1 + wire[at]! > wire.length) {
      throw rangeError(`SSL option 'ALPNProtocols' as bytes must be names each after its length (1 to 255), got a bad length at byte ${at}.`, "ERR_INVALID_ARG_VALUE");
    }
  }
  return Buffer.from(wire);
}

/**
 * @internal The SNI name to send for `host`: none for IP literals, and an
 * absolute name without its trailing dot, as RFC 6066 requires.
 */
export function sniName(host: string | undefined): string | undefined {
  if (host === undefined || host === "" || isIP(host) !== 0) return undefined;
  return relativeName(host);
}

/** @internal Wraps an accepted (or STARTTLS) socket in server-side TLS; the handshake starts at once. */
export function wrapServerSocket(socket: Duplex, config: ServerTls): TLSSocket {
  const wrapped = new tls.TLSSocket(socket as Socket, config.socketOptions) as TLSSocket & { [kVerify]?: ServerTls["verify"] };
  wrapped[kVerify] = config.verify;
  return wrapped;
}

const kVerify: unique symbol = Symbol("pants-ts.verifyClient");

/** What a bare server-side TLSSocket leaves out of tls.Server's own handling. */
interface ServerSideInternals {
  [kVerify]?: ServerTls["verify"];
  _handle?: { verifyError?: () => (Error & { code?: string }) | null } | null;
  _releaseControl?: () => boolean;
}

/**
 * @internal Server side, once the handshake is done: does what tls.Server
 * does for its own sockets and a bare TLSSocket does not. Checks the
 * client's certificate (setting `authorized` / `authorizationError`) and
 * returns the error to fail the handshake with, or null; and releases
 * control, so later TLS errors (a forged record) are emitted as errors.
 */
export function secureServerSide(socket: TLSSocket): Error | null {
  // Node's typings say Error; at run time it is the error's code, as tls.Server sets it.
  const s = socket as unknown as Omit<TLSSocket, "authorizationError"> & ServerSideInternals & { authorizationError?: string };
  const mode = s[kVerify];
  if (mode === undefined) return null; // client side: tls.connect verified it
  s._releaseControl?.();
  if (mode === "none") return null;
  const err = s._handle?.verifyError?.() ?? null;
  if (err === null) {
    s.authorized = true;
    return null;
  }
  s.authorizationError = err.code ?? err.message;
  const sent = Object.keys(socket.getPeerCertificate() ?? {}).length > 0;
  return mode === "required" || (mode === "optional" && sent) ? err : null;
}

/**
 * @internal Wraps a connected socket in client-side TLS: verification on
 * (unless turned off), SNI for host names.
 */
export function wrapClientSocket(socket: Duplex, compiled: ClientTls, host: string | undefined): TLSSocket {
  const connectOptions: ConnectionOptions = { ...compiled.options, socket };
  if (connectOptions.servername === undefined && compiled.verifyIp === undefined) {
    const sni = sniName(host);
    if (sni !== undefined) connectOptions.servername = sni;
  }
  // node:tls verifies against servername, else host: an IP servername (never sent) stands in as the host.
  if (compiled.verifyIp !== undefined) connectOptions.host = compiled.verifyIp;
  else if (host !== undefined && host !== "") connectOptions.host = host;
  const closeListeners = new Set(socket.listeners("close"));
  try {
    return tls.connect(connectOptions);
  } catch (err) {
    // node:tls checks some options only once its TLSSocket has taken the
    // socket over. Out of our reach, that TLSSocket would read from the
    // socket we close on its next tick: an 'error' no one listens to. Its
    // listener on the socket's 'close' destroys it; run that now.
    for (const listener of socket.listeners("close") as Array<() => void>) {
      if (closeListeners.has(listener)) continue;
      socket.off("close", listener);
      try {
        listener.call(socket);
      } catch {
        // Half-made (its net.Socket constructor threw), it cannot be destroyed:
        // checkConnectionOptions keeps node:tls from failing there.
      }
    }
    throw err;
  }
}
