// The README runs: every ```ts/```js block after a `<!-- test: run -->` line typechecks (strict)
// and runs as written, as an ES module of a project that depends on the package, on the CPU
// backend. Its performance section is what benchmarks/readme-table.js makes of the results.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = path.resolve(__dirname, '..');
const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
const built = fs.existsSync(path.join(root, 'dist', 'index.js'));
const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
const ts: typeof import('typescript') | undefined = fs.existsSync(tsc) ? createRequire(__filename)('typescript') : undefined;

interface Snippet {
  line: number;
  lang: string;
  code: string;
}

/** The fenced blocks marked runnable, with the README line each starts on. */
function runnableSnippets(text: string): Snippet[] {
  const lines = text.split('\n');
  const out: Snippet[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() !== '<!-- test: run -->') continue;
    const fence = /^```(ts|js)\s*$/.exec(lines[i + 1] ?? '');
    if (!fence) throw new Error(`README.md:${i + 1}: <!-- test: run --> must come right before a \`\`\`ts or \`\`\`js block`);
    const end = lines.indexOf('```', i + 2);
    if (end < 0) throw new Error(`README.md:${i + 2}: unclosed block`);
    out.push({ line: i + 2, lang: fence[1], code: lines.slice(i + 2, end).join('\n') + '\n' });
  }
  return out;
}

const snippets = runnableSnippets(readme);
let dir = '';

describe.skipIf(!built || !ts)(`README snippets${built && ts ? '' : ' (skipped: dist/ or typescript is missing)'}`, () => {
  beforeAll(() => {
    // a consumer project: ESM, @moe/kernels linked to this checkout
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-readme-'));
    fs.mkdirSync(path.join(dir, 'node_modules', '@moe'), { recursive: true });
    fs.symlinkSync(root, path.join(dir, 'node_modules', '@moe', 'kernels'), 'dir');
    fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ type: 'module', private: true }));
    snippets.forEach((s, i) => fs.writeFileSync(path.join(dir, `snippet${i}.${s.lang === 'ts' ? 'ts' : 'mjs'}`), s.code));
  });
  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('has a runnable snippet for each kernel family and the server section', () => {
    expect(snippets.length).toBeGreaterThanOrEqual(5);
  });

  it('the TypeScript snippets typecheck (strict)', () => {
    const files = snippets.flatMap((s, i) => (s.lang === 'ts' ? [`snippet${i}.ts`] : []));
    const r = spawnSync(
      process.execPath,
      [tsc, '--noEmit', '--strict', '--module', 'nodenext', '--target', 'es2022', '--lib', 'es2022,esnext.disposable',
        '--types', 'node', '--typeRoots', path.join(root, 'node_modules', '@types'), '--moduleDetection', 'force', ...files],
      { cwd: dir, encoding: 'utf8' },
    );
    const located = (r.stdout + r.stderr).replace(/snippet(\d+)\.ts\((\d+),/g, (_, i, l) => `README.md:${snippets[Number(i)].line + Number(l)} (`);
    expect(located).toBe('');
    expect(r.status).toBe(0);
  });

  for (const [i, s] of snippets.entries()) {
    it(`README.md:${s.line} runs`, () => {
      let file = path.join(dir, `snippet${i}.mjs`);
      if (s.lang === 'ts') {
        const js = ts!.transpileModule(s.code, {
          compilerOptions: { module: ts!.ModuleKind.ESNext, target: ts!.ScriptTarget.ES2022, moduleDetection: ts!.ModuleDetectionKind.Force },
        }).outputText;
        file = path.join(dir, `snippet${i}.run.mjs`);
        fs.writeFileSync(file, js);
      }
      const r = spawnSync(process.execPath, [file], {
        cwd: dir,
        encoding: 'utf8',
        timeout: 120_000,
        env: { ...process.env, MOE_KERNELS_BACKEND: 'cpu' },
      });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
    });
  }
});

describe('README performance section', () => {
  it('is what benchmarks/readme-table.js makes of benchmarks/results/', () => {
    const table = createRequire(__filename)(path.join(root, 'benchmarks', 'readme-table.js')) as {
      section(): string;
      replaceIn(readme: string, section: string): string;
    };
    expect(readme, 'node benchmarks/readme-table.js --write').toBe(table.replaceIn(readme, table.section()));
  });

  it('links charts that exist', () => {
    const images = [...readme.matchAll(/!\[[^\]]*\]\(([^)]+)\)/g)].map((m) => m[1]);
    expect(images.length).toBeGreaterThan(0);
    for (const img of images) expect(fs.existsSync(path.join(root, img)), img).toBe(true);
  });
});
