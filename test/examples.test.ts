// Every example runs: the scripts as they are, the notebook's code cells in order as one program
// (as tslab runs them, with top-level await), against the built package (dist/).
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.resolve(__dirname, '..');
const examples = path.join(root, 'examples');
const built = fs.existsSync(path.join(root, 'dist', 'index.js'));
// TypeScript compiles the notebook's cells; a runtime-only install (a GPU host) may lack it
const ts: typeof import('typescript') | undefined = fs.existsSync(path.join(root, 'node_modules', 'typescript'))
  ? createRequire(__filename)('typescript')
  : undefined;

function run(file: string): string {
  return execFileSync(process.execPath, [file], { cwd: root, encoding: 'utf8', timeout: 120_000 });
}

describe.skipIf(!built)(`examples${built ? '' : ' (skipped: dist/ is not built; npm run build:ts)'}`, () => {
  for (const name of fs.readdirSync(examples).filter((f) => f.endsWith('.js'))) {
    it(`${name} runs`, () => {
      expect(run(path.join(examples, name))).toMatch(/relative error/);
    });
  }

  it.skipIf(!ts)(`notebook.ipynb runs cell by cell${ts ? '' : ' (skipped: typescript is not installed)'}`, () => {
    if (!ts) return;
    const nb = JSON.parse(fs.readFileSync(path.join(examples, 'notebook.ipynb'), 'utf8')) as {
      cells: { cell_type: string; source: string[] }[];
    };
    const lines = nb.cells.filter((c) => c.cell_type === 'code').flatMap((c) => c.source.join('').split('\n'));
    // imports stay at module level; the rest runs in an async function (top-level await)
    const imports = lines.filter((l) => l.startsWith('import '));
    const body = lines.filter((l) => !l.startsWith('import '));
    const program = `${imports.join('\n')}\n(async () => {\n${body.join('\n')}\n})().catch((e) => { console.error(e); process.exit(1); });\n`;
    const js = ts.transpileModule(program, { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022 } }).outputText;
    // inside the package directory, so that '@moe/kernels' resolves to this package
    const file = path.join(examples, `.notebook-${process.pid}.js`);
    fs.writeFileSync(file, js);
    try {
      const out = run(file);
      expect(out).toContain('numAccepted');
      expect(out).toContain('max abs error');
    } finally {
      fs.rmSync(file, { force: true });
    }
  });
});
