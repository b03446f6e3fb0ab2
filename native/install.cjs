// npm's install step for pants-ts. The package may carry the addon prebuilt
// for this platform (prebuilds/<platform>-<arch>/, put there when it was
// packed): when that loads here, and the loader will take it (glibc on
// Linux), nothing is built. Otherwise the addon is
// built from native/ with node-gyp; if that fails, pants-ts runs on node:net
// and the install still succeeds. In a git checkout it always builds from the
// sources, so that a prebuilt copy left over from `npm pack` is never stale.
"use strict";
const { spawnSync } = require("node:child_process");
const { existsSync } = require("node:fs");
const { join } = require("node:path");

const root = join(__dirname, "..");
const prebuilt = join(root, "prebuilds", `${process.platform}-${process.arch}`, "pants_native.node");

/**
 * Why the loader (src/native-binding.ts, prebuiltUnusable) will refuse the
 * prebuilt addon here whether it loads or not, else null: on Linux it is
 * linked against glibc, so not under musl, whose dlopen can load it all the
 * same (it defers the symbols it cannot resolve).
 */
function loaderRefuses() {
  if (process.platform !== "linux" || process.report === undefined) return null;
  const excluded = process.report.excludeNetwork;
  process.report.excludeNetwork = true;
  try {
    return typeof process.report.getReport().header.glibcVersionRuntime === "string" ? null : "it is linked against glibc, and this C library is another (musl?)";
  } catch {
    return null; // no report: the probe below decides (the install must not fail)
  } finally {
    process.report.excludeNetwork = excluded;
  }
}

/** Whether the prebuilt addon loads in a node of this kind (a child: a crash must not fail the install), and the loader will take it. */
function prebuiltLoads() {
  if (!existsSync(prebuilt) || existsSync(join(root, ".git"))) return false;
  const refused = loaderRefuses();
  if (refused !== null) {
    console.warn(`pants-ts: the prebuilt addon is not for this platform (${refused}); building it from the sources.`);
    return false;
  }
  // The child prints the error's message alone: Node's report of an uncaught
  // error starts with the line of its loader that threw, which says nothing.
  const probe = spawnSync(process.execPath, ["-e", `try { require(${JSON.stringify(prebuilt)}); } catch (err) { process.stderr.write(String(err && err.message)); process.exit(1); }`], { encoding: "utf8" });
  if (probe.status === 0) return true;
  const why = (probe.stderr || "").trim().split("\n")[0] || (probe.signal ? `killed by ${probe.signal}` : `exit ${probe.status}`);
  console.warn(`pants-ts: the prebuilt addon does not load here (${why}); building it from the sources.`);
  return false;
}

if (!prebuiltLoads()) {
  // npm puts its node-gyp on PATH for install scripts.
  const built = spawnSync("node-gyp", ["rebuild"], { cwd: root, stdio: "inherit", shell: process.platform === "win32" });
  // node-gyp's own output says why it failed; a spawn that failed (not on PATH outside npm) says nothing.
  const why = built.error ? ` (${built.error.message})` : "";
  if (built.status !== 0) console.warn(`pants-ts: the native addon could not be built${why}; the JS transport (node:net) will be used.`);
}
