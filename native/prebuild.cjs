// npm pack's prepack step for pants-ts: builds the addon from native/ for
// this platform and puts a copy in prebuilds/<platform>-<arch>/, which the
// package ships. An install whose scripts do not run (npm 12 until the
// application approves them, --ignore-scripts) or that has no C compiler then
// still gets the native transport on this platform; elsewhere the install
// script builds it. postpack removes the copy (native/prebuild.cjs --clean).
//   node native/prebuild.cjs               build, then copy
//   node native/prebuild.cjs --from-build  copy build/Release's addon as it is
//   node native/prebuild.cjs --clean       remove prebuilds/
"use strict";
const { spawnSync } = require("node:child_process");
const { copyFileSync, existsSync, mkdirSync, rmSync } = require("node:fs");
const { join } = require("node:path");

const root = join(__dirname, "..");
const dir = join(root, "prebuilds");
const mode = process.argv[2];

if (mode === "--clean") {
  rmSync(dir, { recursive: true, force: true });
} else {
  if (mode !== "--from-build") {
    const built = spawnSync("node-gyp", ["rebuild"], { cwd: root, stdio: "inherit", shell: process.platform === "win32" });
    if (built.status !== 0) {
      // node-gyp's own output says why it failed; a spawn that failed (not on PATH) says nothing.
      const why = built.error ? ` (${built.error.message})` : "";
      console.error(`pants-ts prebuild: node-gyp rebuild failed${why}; packing with no prebuilt addon would leave installs without scripts on node:net.`);
      process.exit(1);
    }
  }
  const addon = join(root, "build", "Release", "pants_native.node");
  if (!existsSync(addon)) {
    console.error(`pants-ts prebuild: ${addon} is missing (npm run build:native).`);
    process.exit(1);
  }
  // Only this platform's: a folder left for another would ship too.
  rmSync(dir, { recursive: true, force: true });
  const target = join(dir, `${process.platform}-${process.arch}`);
  mkdirSync(target, { recursive: true });
  copyFileSync(addon, join(target, "pants_native.node"));
}
