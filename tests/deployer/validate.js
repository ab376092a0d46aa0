#!/usr/bin/env node
// Offline check of a Functions project with the deployer library itself
// (@nimbella/nimbella-deployer 4.3.10, installed by scripts/setup_node_tools.sh into .cache/node).
//
//   node tests/deployer/validate.js <projectDir> [envFile] [--build]
//
// readProject runs the deployer's validator (keys, triggers, cron, limits, webSecure, runtimes),
// the ${VAR} substitution from envFile (default <projectDir>/.env), the merge with the packages/
// tree and the `web` defaulting. No network and no credentials: the runtimes table is given here
// instead of being fetched from the API host.
//
// With --build it then runs the deployer's own local build (each function's build.sh, then the
// .include resolution and zipping into <function>/__deployer__.zip), as `doctl serverless deploy`
// does before uploading; nothing is deployed. It writes into projectDir: use a scratch copy.
//
// Prints ONE JSON line: {"ok": true, "spec": {...}[, "built": [...]]} or {"ok": false, "error": "..."}.
// Exit codes: 0 valid, 1 invalid project, 2 the deployer library is not installed.
'use strict';
const path = require('path');
const fs = require('fs');

const repo = path.resolve(__dirname, '..', '..');
const nodeDir = process.env.COLDCOPY_NODE_DIR || path.join(repo, '.cache', 'node');
const deployerPath = path.join(nodeDir, 'node_modules', '@nimbella', 'nimbella-deployer');

function out(obj, code) {
  process.stdout.write(JSON.stringify(obj) + '\n');
  process.exit(code);
}

if (!fs.existsSync(path.join(deployerPath, 'package.json'))) {
  out({ ok: false, missing: true,
        error: `@nimbella/nimbella-deployer is not installed in ${nodeDir}; run scripts/setup_node_tools.sh` }, 2);
}
const deployer = require(deployerPath);

// Python kinds listed by DigitalOcean's runtime docs (python:3.9 … 3.13); 3.11 is the one we deploy.
const RUNTIMES = {
  python: [
    { kind: 'python:3.11', default: true },
    { kind: 'python:3.9' },
    { kind: 'python:3.12' },
    { kind: 'python:3.13' },
  ],
  nodejs: [{ kind: 'nodejs:18', default: true }],
};

const args = process.argv.slice(2).filter((a) => a !== '--build');
const doBuild = process.argv.includes('--build');
const projectDir = path.resolve(args[0] || '.');
const envFile = args[1] ? path.resolve(args[1]) : path.join(projectDir, '.env');

function plain(action) {
  const keys = ['name', 'file', 'runtime', 'main', 'web', 'webSecure', 'limits', 'triggers',
                'environment', 'parameters', 'annotations', 'build', 'remoteBuild', 'localBuild'];
  const result = {};
  for (const k of keys) if (action[k] !== undefined) result[k] = action[k];
  return result;
}

(async () => {
  const warnings = [];
  const feedback = { progress() {}, warn(...args) { warnings.push(args.join(' ')); } };
  let spec;
  try {
    spec = await deployer.readProject(projectDir, envFile, undefined, deployer.makeIncluder(undefined, undefined),
                                      false, feedback, RUNTIMES);
  } catch (err) {
    out({ ok: false, error: String(err && err.message ? err.message : err) }, 1);
  }
  if (spec.error) {
    out({ ok: false, error: String(spec.error.message || spec.error), warnings }, 1);
  }
  const summary = {
    ok: true,
    warnings,
    spec: {
      environment: spec.environment || null,
      parameters: spec.parameters || null,
      strays: spec.strays || [],
      libBuild: spec.libBuild || null,
      packages: (spec.packages || []).map((p) => ({
        name: p.name,
        environment: p.environment || null,
        web: p.web === undefined ? null : p.web,
        actions: (p.actions || []).map(plain),
      })),
    },
  };
  if (doBuild) {
    spec.flags = {};  // normally set by prepareToDeploy (which needs credentials)
    const built = await deployer.buildProject(spec, RUNTIMES);
    if (built.error) {
      out({ ok: false, error: 'build failed: ' + String(built.error.message || built.error), warnings }, 1);
    }
    summary.built = [];
    for (const p of built.packages || []) {
      for (const a of p.actions || []) {
        if (a.buildError) {
          out({ ok: false, error: `build of ${p.name}/${a.name} failed: ${a.buildError.message}`, warnings }, 1);
        }
        summary.built.push({ package: p.name, name: a.name, file: a.file, zipped: !!a.zipped });
      }
    }
  }
  out(summary, 0);
})();
