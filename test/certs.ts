/**
 * Test certificates made at run time with the openssl command line: a CA,
 * server certificates (localhost, 127.0.0.1, ::1; and SNI names), a client
 * certificate, and a self-signed one. Nothing secret is committed.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface CertPair {
  key: string; // path
  cert: string; // path
  keyPem: Buffer;
  certPem: Buffer;
}

export interface Certs {
  dir: string;
  ca: CertPair;
  server: CertPair;
  server2: CertPair;
  sniA: CertPair;
  sniB: CertPair;
  client: CertPair;
  otherHost: CertPair;
  /** key and certificate in one PEM file, as Pants' fixture had it */
  combined: string;
  cleanup(): void;
}

/** True if the openssl command is available. */
export function hasOpenssl(): boolean {
  return spawnSync("openssl", ["version"]).status === 0;
}

function openssl(args: string[], cwd: string): void {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

function pair(dir: string, name: string): CertPair {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.crt`);
  return {
    key,
    cert,
    get keyPem() {
      return readFileSync(key);
    },
    get certPem() {
      return readFileSync(cert);
    },
  } as CertPair;
}

function issue(dir: string, name: string, cn: string, sans: string, extUsage: string): CertPair {
  const p = pair(dir, name);
  openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", p.key, "-out", `${name}.csr`, "-subj", `/CN=${cn}`], dir);
  const ext = join(dir, `${name}.ext`);
  writeFileSync(ext, `basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=${extUsage}\n${sans ? `subjectAltName=${sans}\n` : ""}`);
  openssl(["x509", "-req", "-in", `${name}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", p.cert, "-days", "2", "-extfile", ext], dir);
  return p;
}

/** Cert dirs not yet cleaned up; whatever a test forgot goes when the process exits. */
const pending = new Set<string>();
process.once("exit", () => {
  for (const dir of pending) rmSync(dir, { recursive: true, force: true });
});

/** Generates a fresh set of certificates in a temp dir. */
export function makeCerts(): Certs {
  const dir = mkdtempSync(join(tmpdir(), "pants-ts-certs-"));
  pending.add(dir);
  const ca = pair(dir, "ca");
  openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", ca.key, "-out", ca.cert, "-days", "2", "-subj", "/CN=pants-ts test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"], dir);
  const server = issue(dir, "server", "localhost", "DNS:localhost,IP:127.0.0.1,IP:::1", "serverAuth");
  const server2 = issue(dir, "server2", "localhost-rotated", "DNS:localhost,IP:127.0.0.1,IP:::1", "serverAuth");
  const sniA = issue(dir, "sni-a", "a.test", "DNS:a.test", "serverAuth");
  const sniB = issue(dir, "sni-b", "b.test", "DNS:b.test,DNS:*.b.test", "serverAuth");
  const client = issue(dir, "client", "client", "", "clientAuth");
  const otherHost = issue(dir, "other", "other.example", "DNS:other.example", "serverAuth");
  const combined = join(dir, "combined.pem");
  writeFileSync(combined, Buffer.concat([readFileSync(server.key), readFileSync(server.cert)]));
  return {
    dir,
    ca,
    server,
    server2,
    sniA,
    sniB,
    client,
    otherHost,
    combined,
    cleanup: () => {
      pending.delete(dir);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
