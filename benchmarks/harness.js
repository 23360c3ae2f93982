#!/usr/bin/env node
// What every benchmark program here shares, so that all of them measure, name and write
// results the same way: CUDA-graph timing, the rotation over weight sets larger than L2, one
// seeded random generator, statistics, card naming, arguments, result files (JSON + Markdown
// with a common header), the join of our rows with a peer's, and a clean exit without a GPU.
//
//   const h = require('./harness');
//   h.run(async () => { const moe = h.moe(); ... });   // exits EXIT_NO_GPU (3) without a GPU
//
// As a program, `node benchmarks/harness.js card` prints the card name of cuda:0 (the one
// result files carry), or exits with EXIT_NO_GPU where no CUDA GPU is usable.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { parseArgs } = require('node:util');

/** Exit status of a benchmark that measured nothing because no CUDA GPU is usable. */
const EXIT_NO_GPU = 3;
/** Exit status for arguments that could not be used. */
const EXIT_USAGE = 2;
const RESULTS_DIR = path.join(__dirname, 'results');
const ROOT = path.join(__dirname, '..');

// ---- the package and the no-GPU exit -------------------------------------------------------

let loaded;
/** The package, from ../dist; loaded on first use so the pure helpers work without a build. */
function moe() {
  if (!loaded) {
    try {
      loaded = require('../dist');
    } catch (e) {
      if (e && e.code === 'MODULE_NOT_FOUND' && String(e.message).includes(path.join(ROOT, 'dist'))) {
        throw new Error('the package is not built: dist/ is missing (npm run build:ts)');
      }
      throw e;
    }
  }
  return loaded;
}

class UsageError extends Error {}

/** The running program as a path from the repository root, for messages. */
function program() {
  return process.argv[1] ? path.relative(ROOT, process.argv[1]) || process.argv[1] : 'benchmark';
}

/** One line per failure: `error: CODE: message` for a MoeError, no stack. */
function fail(e) {
  const code = e && typeof e.code === 'string' && /^E_[A-Z_]+$/.test(e.code) ? `${e.code}: ` : '';
  const message = e instanceof Error ? e.message : String(e);
  console.error(`error: ${code}${message}`);
  process.exit(e instanceof UsageError ? EXIT_USAGE : 1);
}

/** Exits with EXIT_NO_GPU and says why when this process cannot use a CUDA GPU. */
function requireGpu() {
  const m = moe();
  if (!m.cudaAvailable()) {
    console.error(`${program()}: needs a CUDA GPU (${m.cudaUnavailableReason()}); nothing was measured.`);
    process.exit(EXIT_NO_GPU);
  }
}

/** Runs a benchmark's main: the GPU check first (unless gpu: false), every error as one line. */
function run(main, { gpu = true } = {}) {
  process.on('uncaughtException', fail);
  process.on('unhandledRejection', fail);
  Promise.resolve()
    .then(() => {
      if (gpu) requireGpu();
      return main();
    })
    .catch(fail);
}

// ---- arguments -----------------------------------------------------------------------------

/**
 * Parses the command line with node:util parseArgs. `options` are parseArgs options, each with
 * an optional `help` text and `value` name; --help is added, and --out DIR defaulting to `out` (results/ unless
 * given; null: no default; false: no --out). Unknown or malformed arguments throw a UsageError
 * (exit 2 under run()); --help prints the usage and exits 0.
 */
function parse({ usage, options = {}, positionals = false, out = RESULTS_DIR, argv = process.argv.slice(2) }) {
  const all = {
    ...(out === false ? {} : { out: { type: 'string', value: 'DIR', ...(out === null ? {} : { default: out }), help: 'folder for the results' } }),
    ...options,
    help: { type: 'boolean', short: 'h', help: 'this text' },
  };
  const config = {};
  for (const [name, o] of Object.entries(all)) {
    const { help, value, ...rest } = o;
    config[name] = rest;
  }
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: config, allowPositionals: positionals, strict: true });
  } catch (e) {
    throw new UsageError(`${e.message}\n${usage}`);
  }
  if (parsed.values.help) {
    const lines = Object.entries(all).map(([name, o]) => {
      const value = o.type === 'string' ? ` ${o.value ?? name.toUpperCase()}` : '';
      const fallback = o.default !== undefined && name !== 'out' ? ` (default ${o.default})` : '';
      return `  --${name}${value}  ${o.help ?? ''}${fallback}`;
    });
    console.log(`${usage}\n${lines.join('\n')}`);
    process.exit(0);
  }
  return { ...parsed.values, positionals: parsed.positionals };
}

/** A comma-separated list of numbers, each checked by `ok`. */
function numberList(text, name, ok = Number.isFinite) {
  const xs = String(text).split(',').map(Number);
  const bad = String(text).split(',').filter((_, i) => !ok(xs[i]));
  if (bad.length) throw new UsageError(`--${name}: cannot use ${bad.join(', ')}`);
  return xs;
}

/** An integer argument, at least `min` where given. */
function intArg(text, name, min) {
  const x = Number(text);
  if (!Number.isSafeInteger(x) || (min !== undefined && x < min)) {
    throw new UsageError(`--${name}: expected an integer${min !== undefined ? ` >= ${min}` : ''}, got ${text}`);
  }
  return x;
}

// ---- statistics ----------------------------------------------------------------------------

/** The p-th percentile (0..100) by linear interpolation between order statistics. */
function percentile(xs, p) {
  if (!xs.length) throw new Error('percentile of no samples');
  const s = Float64Array.from(xs).sort();
  const r = (Math.min(100, Math.max(0, p)) / 100) * (s.length - 1);
  const lo = Math.floor(r);
  const hi = Math.ceil(r);
  return s[lo] + (s[hi] - s[lo]) * (r - lo);
}

/** The median: the middle sample, or the mean of the two middle ones. */
function median(xs) {
  return percentile(xs, 50);
}

// ---- random numbers ------------------------------------------------------------------------

function rotl(x, k) {
  return (x << k) | (x >>> (32 - k));
}

/**
 * xoshiro128** (Blackman and Vigna), its state filled from the seed by splitmix32: seeded,
 * the same sequence on every machine, and fast enough for the 10^8 values of a logits tensor.
 */
class Rng {
  constructor(seed = 1) {
    if (!Number.isSafeInteger(seed)) throw new Error(`Rng: seed must be an integer, got ${seed}`);
    let z = (seed >>> 0) ^ Math.imul(Math.floor(seed / 4294967296) >>> 0, 0x9e3779b1);
    const next = () => {
      z = (z + 0x9e3779b9) | 0;
      let x = z;
      x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
      x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
      return x ^ (x >>> 16);
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // the one state it cannot leave
    this.spare = null;
  }

  /** Uniform integer in [0, 2^32). */
  uint32() {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in (0, 1), never 0 or 1, so log() of it is finite. */
  float() {
    return (this.uint32() + 0.5) / 4294967296;
  }

  /** Uniform integer in [0, n), n <= 2^32. */
  int(n) {
    return Math.floor(this.float() * n);
  }

  /** Standard normal (Box-Muller, the second value of each pair kept for the next call). */
  normal() {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    const r = Math.sqrt(-2 * Math.log(this.float()));
    const t = 2 * Math.PI * this.float();
    this.spare = r * Math.sin(t);
    return r * Math.cos(t);
  }

  /** Fills a typed array's bytes with random bits; returns it. */
  fill(array) {
    const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
    const words = bytes.length >>> 2;
    const w = new Uint32Array(words);
    for (let i = 0; i < words; i++) w[i] = this.uint32();
    bytes.set(new Uint8Array(w.buffer));
    for (let i = words * 4; i < bytes.length; i++) bytes[i] = this.uint32() & 0xff;
    return array;
  }

  /** n random bytes. */
  bytes(n) {
    return this.fill(new Uint8Array(n));
  }

  /**
   * n random finite bf16 bit patterns, either sign, magnitudes in [2^minExp, 2^maxExp): the
   * exponent uniform over that range, the mantissa uniform.
   */
  bf16Bits(n, { minExp = -8, maxExp = 0 } = {}) {
    if (!(Number.isInteger(minExp) && Number.isInteger(maxExp) && -126 <= minExp && minExp < maxExp && maxExp <= 128)) {
      throw new Error(`bf16Bits: need integers -126 <= minExp < maxExp <= 128, got ${minExp}, ${maxExp}`);
    }
    const out = new Uint16Array(n);
    const span = maxExp - minExp;
    for (let i = 0; i < n; i++) {
      const r = this.uint32();
      const exponent = 127 + minExp + Math.floor(((r >>> 8) / 16777216) * span);
      out[i] = ((r << 8) & 0x8000) | (exponent << 7) | (r & 0x7f);
    }
    return out;
  }
}

// ---- timing on the GPU ---------------------------------------------------------------------

/**
 * Milliseconds per replay of `graph` on `stream`: `warmup` replays, then `trials` samples of
 * `replays` back-to-back replays between a pair of timing events.
 */
async function timeReplays(graph, stream, { trials, replays = 1, warmup = 1 }) {
  const m = moe();
  for (let i = 0; i < warmup; i++) graph.replay(stream);
  await stream.synchronize();
  const start = new m.Event(stream.device, { timing: true });
  const end = new m.Event(stream.device, { timing: true });
  try {
    const samples = [];
    for (let t = 0; t < trials; t++) {
      start.record(stream);
      for (let i = 0; i < replays; i++) graph.replay(stream);
      end.record(stream);
      await end.wait();
      samples.push(start.elapsedMs(end) / replays);
    }
    return samples;
  } finally {
    start.dispose();
    end.dispose();
  }
}

/**
 * Milliseconds per launch, one sample per trial: `launches` calls launch(i), i = 0..launches-1,
 * captured back to back into one CUDA graph, so that host launch overhead (longer than a decode
 * kernel) never leaves the GPU idle inside the timed region.
 */
async function timeLaunches(stream, launch, { launches, trials }) {
  const graph = moe().captureGraph(stream, () => {
    for (let i = 0; i < launches; i++) launch(i);
  });
  try {
    return (await timeReplays(graph, stream, { trials })).map((ms) => ms / launches);
  } finally {
    graph.dispose();
  }
}

/**
 * R, the launches in one graph: about `replayMs` of work per replay, a multiple of `step` (the
 * rotation length) where `max` allows, at least one step, at most `max` (a captured op may keep
 * memory per launch).
 */
function launchesFor(perLaunchMs, { step = 1, replayMs = 3, max = 200 } = {}) {
  return Math.max(step, Math.min(max, Math.ceil(replayMs / perLaunchMs / step) * step));
}

/** timeLaunches with R from launchesFor on a first estimate (one rotation, 3 trials). */
async function timeLaunchesAuto(stream, launch, { step = 1, trials, replayMs = 3, max = 200 }) {
  const estimate = median(await timeLaunches(stream, launch, { launches: step, trials: 3 }));
  const launches = launchesFor(estimate, { step, replayMs, max });
  return { launches, samples: await timeLaunches(stream, launch, { launches, trials }) };
}

/**
 * Device-to-device copy bandwidth with tensor.copyTo: `copies` back-to-back copies of `bytes`
 * between a pair of events, median over `trials`. Counted as bytes read plus written, the DRAM
 * traffic a kernel that reads its operands once competes with.
 */
async function copyBandwidth(stream, { bytes = 1 << 30, copies = 5, trials = 10, warmup = 3 } = {}) {
  const m = moe();
  const src = m.empty([bytes], { dtype: 'u8', device: stream.device, stream });
  const start = new m.Event(stream.device, { timing: true });
  const end = new m.Event(stream.device, { timing: true });
  // copyTo resolves at once for a same-device copy: the copy itself stays queued on `stream`
  const once = async () => (await src.copyTo(stream.device, { stream })).dispose();
  try {
    for (let i = 0; i < warmup; i++) await once();
    const times = [];
    for (let r = 0; r < trials; r++) {
      start.record(stream);
      for (let i = 0; i < copies; i++) await once();
      end.record(stream);
      await end.wait();
      times.push(start.elapsedMs(end) / copies);
    }
    const ms = median(times);
    const perS = (2 * bytes) / (ms * 1e-3);
    return { bytes, ms, tbs: perS / 1e12, gbPerS: perS / 1e9 };
  } finally {
    src.dispose();
    start.dispose();
    end.dispose();
  }
}

// ---- weight sets larger than L2 ------------------------------------------------------------

/** The L2 size of a device from moe.devices(); 50 MiB where the driver reports none. */
function l2Bytes(device) {
  return device.l2CacheBytes || 50 << 20;
}

/**
 * S, the weight sets a timed loop rotates over so that weights come from DRAM as in a model:
 * at least `min` and enough that S x setBytes >= factor x L2, capped at `max` to bound memory
 * (a set so small that the cap binds is then partly served from L2).
 */
function rotationSets(setBytes, l2, { factor = 4, min = 3, max = 32 } = {}) {
  if (!(setBytes > 0)) throw new Error(`rotationSets: setBytes must be positive, got ${setBytes}`);
  return Math.min(max, Math.max(min, Math.ceil((factor * l2) / setBytes)));
}

// ---- naming and the result header ----------------------------------------------------------

/** A card's name as result file names carry it: "NVIDIA H200" -> "NVIDIA-H200". */
function cardName(name) {
  return String(name).replace(/[^A-Za-z0-9]+/g, '-').replace(/^-+|-+$/g, '');
}

let driver;
/** The NVIDIA driver version, or null where it cannot be read. */
function driverVersion() {
  if (driver === undefined) {
    driver = null;
    try {
      const m = /Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s/.exec(fs.readFileSync('/proc/driver/nvidia/version', 'utf8'));
      if (m) driver = m[1];
    } catch {
      // not Linux, or no driver loaded: ask nvidia-smi
    }
    if (driver === null) {
      try {
        const out = execFileSync('nvidia-smi', ['--query-gpu=driver_version', '--format=csv,noheader'], {
          encoding: 'utf8',
          stdio: ['ignore', 'pipe', 'ignore'],
          timeout: 10_000,
        });
        driver = out.split('\n')[0].trim() || null;
      } catch {
        // no nvidia-smi either
      }
    }
  }
  return driver;
}

function packageVersion() {
  return JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version;
}

/** The fields every result file starts with, for the device `dev` of moe.devices(). */
function header(dev) {
  return {
    device: dev.name,
    card: cardName(dev.name),
    driver: driverVersion(),
    date: new Date().toISOString(),
    package: packageVersion(),
    node: process.version,
  };
}

/** The header fields of a result read back (older files lack card, driver and package). */
function headerOf(result) {
  return {
    device: result.device,
    card: result.card ?? cardName(result.device),
    driver: result.driver ?? null,
    date: result.date ?? null,
    package: result.package ?? null,
    node: result.node ?? null,
  };
}

/** The header as one Markdown line. */
function headerLine(result) {
  const h = headerOf(result);
  return `${h.device} (${h.card}) · driver ${h.driver ?? 'n/a'} · ${h.date ?? 'n/a'} · @moe/kernels ${h.package ?? 'n/a'} · Node ${h.node ?? 'n/a'}`;
}

// ---- writing results -----------------------------------------------------------------------

function writeJson(file, value) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(value, null, 2) + '\n');
}

/**
 * One run's results: DIR/NAME.json (the result object, header fields included) and DIR/NAME.md
 * (a title, the header line, then `lines`). Returns both paths.
 */
function writeResults(dir, name, { result, title, lines }) {
  const json = path.join(dir, `${name}.json`);
  const md = path.join(dir, `${name}.md`);
  writeJson(json, result);
  fs.writeFileSync(md, [`# ${title}`, '', headerLine(result), '', ...lines].join('\n') + '\n');
  console.log(`wrote ${json} and ${md}`);
  return { json, md };
}

function readJson(file) {
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

// ---- joining ours with a peer --------------------------------------------------------------

function keyOf(key) {
  return typeof key === 'function' ? key : (r) => JSON.stringify(key.map((f) => r[f]));
}

/**
 * Our rows joined with a peer's by key (field names, or a function of a row): one
 * { ours, peer } per row of ours, peer undefined where the peer has no row of that key.
 */
function join(ours, peers, key) {
  const k = keyOf(key);
  const index = new Map();
  for (const p of peers ?? []) if (!index.has(k(p))) index.set(k(p), p);
  return ours.map((r) => ({ ours: r, peer: index.get(k(r)) }));
}

/** A Markdown table: columns [{ title, cell(row) }]; a null or undefined cell reads `missing`. */
function markdownTable(columns, rows, { missing = 'n/a' } = {}) {
  const cell = (c, r) => {
    const v = c.cell(r);
    return v === null || v === undefined ? missing : String(v);
  };
  return [
    `| ${columns.map((c) => c.title).join(' | ')} |`,
    `|${columns.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${columns.map((c) => cell(c, r)).join(' | ')} |`),
  ];
}

/** a / b as "1.23x"; undefined (a missing cell) where either is missing or b is 0. */
function ratio(a, b, digits = 2) {
  if (a === null || a === undefined || b === null || b === undefined || b === 0) return undefined;
  return `${(a / b).toFixed(digits)}x`;
}

/**
 * Our rows and a peer's in one table: join() by key, then markdownTable() over `columns`,
 * whose cells get { ours, peer } (ratio() makes the ratio columns). Returns { rows, lines }.
 */
function merge(ours, peers, { key, columns, missing = 'n/a' }) {
  const rows = join(ours, peers, key);
  return { rows, lines: markdownTable(columns, rows, { missing }) };
}

module.exports = {
  EXIT_NO_GPU,
  EXIT_USAGE,
  RESULTS_DIR,
  UsageError,
  moe,
  run,
  requireGpu,
  fail,
  parse,
  numberList,
  intArg,
  percentile,
  median,
  Rng,
  timeReplays,
  timeLaunches,
  timeLaunchesAuto,
  launchesFor,
  copyBandwidth,
  l2Bytes,
  rotationSets,
  cardName,
  driverVersion,
  header,
  headerOf,
  headerLine,
  writeJson,
  writeResults,
  readJson,
  join,
  markdownTable,
  ratio,
  merge,
};

if (require.main === module) {
  run(async () => {
    const { positionals } = parse({ usage: 'usage: node benchmarks/harness.js card', positionals: true, out: false });
    if (positionals.length !== 1 || positionals[0] !== 'card') throw new UsageError('usage: node benchmarks/harness.js card');
    console.log(cardName(moe().devices()[0].name));
  });
}
