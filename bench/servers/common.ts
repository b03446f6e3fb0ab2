/**
 * What the Node benchmark servers share: their configuration from the
 * environment (as the driver sets it) and the one line they print when
 * listening. uvloop_server.py reads the same variables.
 *
 *   PORT      port to listen on; 0 picks a free one (the READY line tells which)
 *   HOST      address to listen on (default 127.0.0.1)
 *   SCENARIO  echo-line | echo-raw | echo-raw-lent | http | tls-echo-line | tls-echo-raw
 *             (echo-raw-lent: echo-raw by a handler that only borrows its
 *             chunks; pants-ts sets reuseReadBuffer, the others need no change)
 *   TLS_CERT, TLS_KEY  PEM files, for the tls-* scenarios
 */

/** The jobs a benchmark server can do. */
export const SERVER_SCENARIOS = ["echo-line", "echo-raw", "echo-raw-lent", "http", "tls-echo-line", "tls-echo-raw"] as const;
export type ServerScenario = (typeof SERVER_SCENARIOS)[number];

export interface ServerConfig {
  readonly host: string;
  readonly port: number;
  readonly scenario: ServerScenario;
  /** Echo framing: "line" (by "\n") or "raw" (every chunk back). */
  readonly echo: "line" | "raw" | null;
  /** echo-raw-lent: the handler uses each chunk only inside its call. */
  readonly lent: boolean;
  readonly tls: { readonly certFile: string; readonly keyFile: string } | null;
}

/** The fixed keep-alive answer of the http scenario. */
export const HTTP_RESPONSE = Buffer.from(
  "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!",
  "latin1",
);

function fail(message: string): never {
  process.stderr.write(`bench server: ${message}\n`);
  process.exit(2);
}

export function readConfig(env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const port = Number(env["PORT"] ?? "0");
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad PORT ${JSON.stringify(env["PORT"])}`);
  const scenario = env["SCENARIO"] ?? "echo-line";
  if (!(SERVER_SCENARIOS as readonly string[]).includes(scenario)) {
    fail(`unknown SCENARIO ${JSON.stringify(scenario)} (one of ${SERVER_SCENARIOS.join(", ")})`);
  }
  const s = scenario as ServerScenario;
  let tls: ServerConfig["tls"] = null;
  if (s.startsWith("tls-")) {
    const certFile = env["TLS_CERT"];
    const keyFile = env["TLS_KEY"];
    if (!certFile || !keyFile) fail(`SCENARIO=${s} needs TLS_CERT and TLS_KEY`);
    tls = { certFile, keyFile };
  }
  const lent = s === "echo-raw-lent";
  const echo = s.endsWith("echo-line") ? "line" : s.endsWith("echo-raw") || lent ? "raw" : null;
  return { host: env["HOST"] || "127.0.0.1", port, scenario: s, echo, lent, tls };
}

/**
 * Tells the driver the server is listening: the only line a server prints on
 * stdout, "READY <port>", with " transport=<native|js>" from pants-ts servers
 * (the driver checks it is the transport it asked for).
 */
export function announce(port: number, transport?: string): void {
  process.stdout.write(`READY ${port}${transport === undefined ? "" : ` transport=${transport}`}\n`);
}
