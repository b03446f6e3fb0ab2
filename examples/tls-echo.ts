/**
 * tls-echo: the line echo server over TLS. The connection class is the same
 * as a plain one; TLS is a Server option, and onConnect runs after the
 * handshake.
 *
 *   npx tsx examples/tls-echo.ts        # listens on 127.0.0.1:$PORT (default 4443; 0 picks a free port)
 *   openssl s_client -connect 127.0.0.1:4443 -quiet    # type a line, get it back
 *
 * Certificate: TLS_CERT and TLS_KEY name PEM files (TLS_KEY defaults to
 * TLS_CERT, for a file holding both). Without TLS_CERT a throwaway
 * self-signed certificate (CN=localhost, for localhost and 127.0.0.1, valid
 * one day) is made at start-up with the `openssl` command in a temp dir,
 * loaded, and the dir deleted; clients must then skip verification
 * (s_client only warns; node:tls needs rejectUnauthorized: false).
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { Server, Stream } from "pants-ts";

export default class TlsEcho extends Stream {
  override onConnect(): void {
    this.readDelimiter = "\n";
  }

  override onRead(line: Buffer): void {
    this.write(line);
    this.write("\n");
  }
}

/** Makes a self-signed certificate in `dir` with openssl; returns its file paths. */
function selfSigned(dir: string): { certfile: string; keyfile: string } {
  const certfile = join(dir, "cert.pem");
  const keyfile = join(dir, "key.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", keyfile, "-out", certfile, "-days", "1", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
  ], { stdio: ["ignore", "ignore", "inherit"] });
  return { certfile, keyfile };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const { TLS_CERT, TLS_KEY } = process.env;
  let server: Server;
  if (TLS_CERT) {
    server = new Server(TlsEcho, { sslOptions: { certfile: TLS_CERT, keyfile: TLS_KEY || TLS_CERT } });
  } else {
    const dir = mkdtempSync(join(tmpdir(), "tls-echo-"));
    try {
      server = new Server(TlsEcho, { sslOptions: selfSigned(dir) }); // the files are read here, once
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  server.listen(["127.0.0.1", Number(process.env.PORT ?? 4443)]);
  await server.ready();
  const stop = async (): Promise<void> => {
    await server.shutdown();
    process.exit(0);
  };
  process.once("SIGTERM", stop).once("SIGINT", stop); // before the line below: a signal right after it is handled
  const [host, port] = server.localAddress as [string, number];
  console.log(`tls-echo listening on ${host}:${port}`);
}
