// Builds the dashboard into ../modelplane/static (or $DASHBOARD_OUT): one JavaScript bundle and
// one stylesheet, both with a content hash in their names, and index.html pointing at them.
//
// `import Query from '@operations/Name.graphql'` gives the text of
// graphql/operations/Name.graphql with every fragment it spreads appended, so the page sends the
// same committed operations the Python tests validate against the schema.
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const here = path.dirname(fileURLToPath(import.meta.url));
const operationsDir = path.resolve(here, '..', 'graphql', 'operations');
const fragmentsDir = path.join(operationsDir, 'fragments');
const outDir = path.resolve(process.env.DASHBOARD_OUT ?? path.join(here, '..', 'modelplane', 'static'));
const SPREAD = /\.\.\.\s*([A-Za-z_][A-Za-z0-9_]*)/g;

/** The operation's text followed by the fragments it uses, transitively. */
async function withFragments(file) {
  const text = await readFile(file, 'utf8');
  const included = new Map();
  const pending = [...text.matchAll(SPREAD)].map((match) => match[1]);
  while (pending.length > 0) {
    const name = pending.pop();
    if (included.has(name)) continue;
    const fragmentFile = path.join(fragmentsDir, `${name}.graphql`);
    let fragment;
    try {
      fragment = await readFile(fragmentFile, 'utf8');
    } catch {
      continue; // an inline fragment on a type (`... on Model`), not a named one
    }
    included.set(name, { file: fragmentFile, text: fragment });
    pending.push(...[...fragment.matchAll(SPREAD)].map((match) => match[1]));
  }
  return {
    text: [text, ...[...included.values()].map((f) => f.text)].join('\n'),
    files: [...included.values()].map((f) => f.file),
  };
}

const operations = {
  name: 'graphql-operations',
  setup(build) {
    build.onResolve({ filter: /^@operations\// }, (args) => ({
      path: path.join(operationsDir, args.path.slice('@operations/'.length)),
    }));
    build.onLoad({ filter: /\.graphql$/ }, async (args) => {
      const { text, files } = await withFragments(args.path);
      return { contents: `export default ${JSON.stringify(text)};`, loader: 'js', watchFiles: files };
    });
  },
};

const started = Date.now();
await rm(outDir, { recursive: true, force: true });
await mkdir(outDir, { recursive: true });
const result = await esbuild.build({
  absWorkingDir: here,
  entryPoints: { app: 'src/main.js' },
  bundle: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  sourcemap: 'linked',
  entryNames: '[name]-[hash]',
  outdir: outDir,
  metafile: true,
  logLevel: 'warning',
  plugins: [operations],
});

const entry = Object.entries(result.metafile.outputs).find(([, o]) => o.entryPoint === 'src/main.js');
const script = path.basename(entry[0]);
const style = path.basename(entry[1].cssBundle);
const template = await readFile(path.join(here, 'src', 'index.html'), 'utf8');
const page = template.replace('{{script}}', `/static/${script}`).replace('{{style}}', `/static/${style}`);
await writeFile(path.join(outDir, 'index.html'), page);
const size = Object.values(result.metafile.outputs).reduce((sum, o) => sum + o.bytes, 0);
console.log(
  `[dashboard] built ${script} and ${style} into ${path.relative(process.cwd(), outDir) || '.'} ` +
    `(${(size / 1024).toFixed(0)} KiB with source maps) in ${Date.now() - started} ms`,
);
