/**
 * What every benchmark driver prepares before measuring: the C load
 * generator, a throwaway TLS certificate, and where the servers are.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, renameSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { which } from "./proc.js";
import type { Paths } from "./measure.js";

/**
 * Compiles bench/loadgen.c into bench/build/loadgen (with OpenSSL when its
 * headers are there) when the binary is missing, older than the source, or
 * was built without OpenSSL that is now available. Returns the binary and
 * whether it speaks TLS.
 */
export function buildLoadgen(root: string, log: (line: string) => void): { binary: string; tls: boolean } {
  const source = join(root, "bench", "loadgen.c");
  const buildDir = join(root, "bench", "build");
  const binary = join(buildDir, "loadgen");
  const features = () => spawnSync(binary, ["-v"], { encoding: "utf8" }).stdout ?? "";
  const opensslHeaders = existsSync("/usr/include/openssl/ssl.h");
  if (existsSync(binary) && statSync(binary).mtimeMs >= statSync(source).mtimeMs) {
    const tls = features().includes("tls=1");
    if (tls || !opensslHeaders) return { binary, tls };
  }
  if (which("cc") === null) throw new Error("no C compiler (cc) on PATH to build bench/loadgen.c");
  mkdirSync(buildDir, { recursive: true });
  const temporary = `${binary}.${process.pid}.tmp`;
  const flags = ["-O2", "-Wall", "-Wextra", "-o", temporary, source];
  let r = spawnSync("cc", [...flags.slice(0, 3), "-DWITH_OPENSSL", ...flags.slice(3), "-lssl", "-lcrypto"], { encoding: "utf8" });
  if (r.status !== 0) {
    log("bench: building loadgen without OpenSSL (TLS load will come from the Node client)");
    r = spawnSync("cc", flags, { encoding: "utf8" });
  }
  if (r.status !== 0) throw new Error(`cc failed to build bench/loadgen.c:\n${r.stderr}`);
  if (r.stderr.trim() !== "") log(r.stderr.trim());
  renameSync(temporary, binary);
  const tls = features().includes("tls=1");
  log(`bench: built ${binary}${tls ? " (with TLS)" : ""}`);
  return { binary, tls };
}

/**
 * A throwaway self-signed certificate for the TLS scenarios. RSA-2048 by
 * default: with OpenSSL 3 a full handshake costs the client about as much
 * CPU as an EC P-256 server, so an EC certificate leaves the load generator
 * the bottleneck of tls-handshake; RSA signing puts the weight on the server.
 */
export function makeCertificate(dir: string, kind: "rsa" | "ec"): { cert: string; key: string } {
  if (which("openssl") === null) throw new Error("openssl is not installed (needed to make a throwaway certificate)");
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  const keyArgs = kind === "rsa" ? ["-newkey", "rsa:2048"] : ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
  const r = spawnSync("openssl", ["req", "-x509", ...keyArgs, "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`openssl could not make a certificate: ${r.stderr}`);
  return { cert, key };
}

/** Where the servers and clients are, for a driver in `distBench` (dist/bench). */
export function benchPaths(distBench: string, tmp: string, loadgen: string): Paths {
  const root = resolve(distBench, "../..");
  return {
    root,
    tmp,
    loadgen,
    rawServer: join(distBench, "servers", "raw.js"),
    pantsServer: join(distBench, "servers", "pants.js"),
    uvloopServer: join(root, "bench", "servers", "uvloop_server.py"),
    respRawServer: join(distBench, "servers", "resp-raw.js"),
    respExample: join(root, "dist", "examples", "resp-server.js"),
    tlsClient: join(distBench, "clients", "tls-client.js"),
    framing: join(distBench, "framing", "main.js"),
  };
}
