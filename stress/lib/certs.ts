/**
 * A throwaway TLS certificate for the stress servers, made with the openssl
 * command line in a temp dir (removed by the campaign when it ends). Nothing
 * secret is committed. Without openssl the TLS cases are skipped.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface StressCert {
  dir: string;
  certfile: string;
  keyfile: string;
  /** The certificate's PEM (clients trust it as their CA). */
  certPem: Buffer;
  cleanup(): void;
}

/** True if the openssl command can be run. */
export function hasOpenssl(): boolean {
  return spawnSync("openssl", ["version"], { stdio: "ignore" }).status === 0;
}

/** A self-signed P-256 certificate for localhost, 127.0.0.1 and ::1, valid two days. */
export function makeCert(): StressCert {
  const dir = mkdtempSync(join(tmpdir(), "pants-ts-stress-"));
  const certfile = join(dir, "server.crt");
  const keyfile = join(dir, "server.key");
  const result = spawnSync(
    "openssl",
    [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", keyfile, "-out", certfile, "-days", "2", "-subj", "/CN=localhost",
      "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  if (result.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`openssl failed: ${result.stderr?.toString() ?? ""}`);
  }
  return { dir, certfile, keyfile, certPem: readFileSync(certfile), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
