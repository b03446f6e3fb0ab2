#!/usr/bin/env node
// The pants-ts command line; see `pants-ts --help`.
import { existsSync } from "node:fs";

const cli = new URL("../dist/src/cli.js", import.meta.url);
if (!existsSync(cli)) {
  process.stderr.write("pants-ts: the package is not built; run `npm run build` (or `npm install`) first.\n");
  process.exit(1);
}
const { main } = await import(cli.href);
// Not awaited here: a served module whose own top-level await never settles
// would leave this one unsettled, and Node (24) would name this line for it.
// The command says which module it was (its exit code is 13, as Node's).
main(process.argv.slice(2)).then((code) => {
  if (code >= 0) {
    // Exit now that the work is done (drained, or help printed), even if a
    // user module left a timer behind; give stdout a moment to flush first.
    process.exitCode = code;
    setTimeout(() => process.exit(code), 200).unref();
  }
});
