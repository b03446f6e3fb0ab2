// npm's install step for pants-ts. The package may carry the addon prebuilt
// for this platform (prebuilds/<platform>-<arch>/, put there when it was
// packed): when that loads here, nothing is built. Otherwise the addon is
// built from native/ with node-gyp; if that fails, pants-ts runs on node:net
// and the install still succeeds. In a git checkout it always builds from the
// sources, so that a prebuilt copy left over from `npm pack` is never stale.
"use strict";
const { spawnSync } = require("node:child_process");
const { existsSync } = require("node:fs");
const { join } = require("node:path");

const root = join(__dirname, "..");
const prebuilt = join(root, "prebuilds", `${process.platform}-${process.arch}`, "pants_native.node");

/** Whether the prebuilt addon loads in a node of this kind (a child: a crash must not fail the install). */
function prebuiltLoads() {
  if (!existsSync(prebuilt) || existsSync(join(root, ".git"))) return false;
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
