/**
 * Every TypeScript sample in the README, SECURITY.md and docs/ compiles against the
 * built package, so no sample can rot. (Runnable examples live in
 * examples/ and have tests of their own.)
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sameOnEitherTransport } from "./helpers.js";

const root = new URL("..", import.meta.url).pathname;

function samples(): Array<{ file: string; index: number; code: string }> {
  const files = ["README.md", "SECURITY.md", ...readdirSync(join(root, "docs")).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`)];
  const out: Array<{ file: string; index: number; code: string }> = [];
  for (const file of files) {
    const text = readFileSync(join(root, file), "utf8");
    let index = 0;
    for (const match of text.matchAll(/```ts\n([\s\S]*?)```/g)) out.push({ file, index: index++, code: match[1]! });
  }
  return out;
}

test("every ```ts sample in README.md, SECURITY.md and docs/*.md type-checks against the package", { skip: sameOnEitherTransport, timeout: 120_000 }, () => {
  const all = samples();
  assert.ok(all.length >= 10, `found ${all.length} samples`);
  // Inside the package, so "pants-ts" resolves to the build by self-reference.
  const dir = join(root, "test", ".doc-samples");
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const names: string[] = [];
  for (const s of all) {
    const name = `${s.file.replace(/[/.]/g, "_")}_${s.index}.ts`;
    // Each sample is a module of its own.
    writeFileSync(join(dir, name), `${s.code}\nexport {};\n`);
    names.push(name);
  }
  writeFileSync(
    join(dir, "tsconfig.json"),
    JSON.stringify({
      extends: "../../tsconfig.json",
      compilerOptions: { noEmit: true, noUnusedLocals: false, noUnusedParameters: false, rootDir: "." },
      include: ["*.ts"],
    }),
  );
  const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
  const r = spawnSync(process.execPath, [tsc, "-p", dir], { cwd: root, encoding: "utf8" });
  assert.equal(r.status, 0, `samples that do not compile:\n${r.stdout}${r.stderr}`);
  rmSync(dir, { recursive: true, force: true });
});

test("typedoc (npm run docs) builds the API reference without a warning: every {@link}, every anchor of a linked guide, every referenced type exported", { skip: sameOnEitherTransport, timeout: 120_000 }, () => {
  const typedoc = join(root, "node_modules", "typedoc", "bin", "typedoc");
  // Rendered (to a temp dir): links to a document's headings are checked only when the pages are written.
  const out = mkdtempSync(join(tmpdir(), "pants-ts-api-"));
  try {
    const r = spawnSync(process.execPath, [typedoc, "--treatWarningsAsErrors", "--out", out], { cwd: root, encoding: "utf8" });
    assert.equal(r.status, 0, `typedoc:\n${r.stdout}${r.stderr}`);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
