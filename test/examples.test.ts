// Every example runs: the scripts with node, the notebooks under the real tslab kernel
// (jupyter nbconvert --execute), against the built package (dist/).
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.resolve(__dirname, '..');
const examples = path.join(root, 'examples');
const built = fs.existsSync(path.join(root, 'dist', 'index.js'));
const notebooks = fs.readdirSync(examples).filter((f) => f.endsWith('.ipynb'));

function run(file: string): string {
  return execFileSync(process.execPath, [file], { cwd: root, encoding: 'utf8', timeout: 120_000 });
}

interface Output {
  output_type: string;
  ename?: string;
  evalue?: string;
  traceback?: string[];
}
interface Notebook {
  cells: { cell_type: string; source: string[]; outputs?: Output[] }[];
  metadata: { kernelspec?: { name?: string } };
}

function readNotebook(file: string): Notebook {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as Notebook;
}

// The kernel is the tslab of the examples' own project (npm install --prefix examples); Jupyter
// starts it by the name `tslab`, so its bin folder goes first on the PATH.
const bin = path.join(examples, 'node_modules', '.bin');
const env = { ...process.env, PATH: `${bin}${path.delimiter}${process.env.PATH ?? ''}` };

/** Why the notebooks cannot run under tslab here, or undefined when they can. */
function tslabMissing(): string | undefined {
  if (!built) return 'dist/ is not built (npm run build:ts)';
  const nbconvert = spawnSync('jupyter', ['nbconvert', '--version'], { encoding: 'utf8', env });
  if (nbconvert.error || nbconvert.status !== 0) return 'jupyter nbconvert is not installed';
  if (!fs.existsSync(path.join(bin, 'tslab'))) return 'tslab is not installed (npm install --prefix examples)';
  if (!fs.existsSync(path.join(examples, 'node_modules', '@moe', 'kernels'))) return '@moe/kernels is not linked into examples (npm install --prefix examples)';
  const specs = spawnSync('jupyter', ['kernelspec', 'list', '--json'], { encoding: 'utf8', env });
  const names = specs.status === 0 ? Object.keys((JSON.parse(specs.stdout) as { kernelspecs: object }).kernelspecs) : [];
  if (!names.includes('tslab')) return 'the tslab kernel is not registered with Jupyter (examples/node_modules/.bin/tslab install)';
  return undefined;
}

describe.skipIf(!built)(`examples${built ? '' : ' (skipped: dist/ is not built; npm run build:ts)'}`, () => {
  for (const name of fs.readdirSync(examples).filter((f) => f.endsWith('.js'))) {
    it(`${name} runs`, () => {
      expect(run(path.join(examples, name))).toMatch(/relative error/);
    });
  }
});

describe('notebooks', () => {
  for (const name of notebooks) {
    it(`${name} is committed with the outputs of a run, for the tslab kernel`, () => {
      const nb = readNotebook(path.join(examples, name));
      expect(nb.metadata.kernelspec?.name).toBe('tslab');
      const code = nb.cells.filter((c) => c.cell_type === 'code');
      expect(code.length).toBeGreaterThan(0);
      // tslab leaves execution_count empty; every code cell here prints something
      for (const c of code) expect(c.outputs?.length, c.source.join('')).toBeGreaterThan(0);
    });
  }

  const missing = tslabMissing();
  for (const name of notebooks) {
    it.skipIf(missing !== undefined)(`${name} runs under the tslab kernel${missing ? ` (skipped: ${missing})` : ''}`, () => {
      const out = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-notebook-'));
      try {
        // the kernel runs in examples/ (the notebook's folder), where @moe/kernels resolves
        const r = spawnSync(
          'jupyter',
          ['nbconvert', '--to', 'notebook', '--execute', '--allow-errors', '--ExecutePreprocessor.kernel_name=tslab',
            '--ExecutePreprocessor.timeout=600', '--output-dir', out, path.join(examples, name)],
          { encoding: 'utf8', env, timeout: 900_000 },
        );
        expect(r.status, r.stderr).toBe(0);
        const nb = readNotebook(path.join(out, name));
        const errors = nb.cells.flatMap((c) =>
          (c.outputs ?? []).filter((o) => o.output_type === 'error').map((o) => `${c.source.join('')}\n--> ${o.ename}: ${o.evalue}\n${(o.traceback ?? []).join('\n')}`),
        );
        expect(errors, errors.join('\n\n')).toEqual([]);
        for (const c of nb.cells.filter((c) => c.cell_type === 'code')) expect(c.outputs?.length, c.source.join('')).toBeGreaterThan(0);
      } finally {
        fs.rmSync(out, { recursive: true, force: true });
      }
    });
  }
});
