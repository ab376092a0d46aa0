#!/usr/bin/env bash
# Install the Node tools the test suite needs (today: @nimbella/nimbella-deployer 4.3.10, used by
# tests/deployer/validate.js to validate project.yml offline) into .cache/node of the repository.
#
# Idempotent: when the pinned versions are already installed it does nothing and exits 0.
# Needs node >= 18 and npm on PATH, and the npm registry. Override the target with COLDCOPY_NODE_DIR.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/tests/deployer"
dest="${COLDCOPY_NODE_DIR:-$repo/.cache/node}"
want_version="4.3.10"

die() { echo "setup_node_tools: $*" >&2; exit 1; }

command -v node >/dev/null 2>&1 || die "node is not installed (need Node.js 18 or newer; e.g. apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || die "npm is not installed (e.g. apt-get install npm)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || die "node $(node --version) is too old; need 18 or newer"

installed_version() {
  local pj="$dest/node_modules/@nimbella/nimbella-deployer/package.json"
  if [ -f "$pj" ]; then node -p "require('$pj').version" 2>/dev/null || true; fi
}

if [ "$(installed_version)" = "$want_version" ] && cmp -s "$src/package.json" "$dest/package.json"; then
  echo "setup_node_tools: @nimbella/nimbella-deployer $want_version already in $dest"
  exit 0
fi

mkdir -p "$dest"
# .cache/ holds downloads and installs only: keep it out of git even without a root .gitignore entry.
if [ -z "${COLDCOPY_NODE_DIR:-}" ] && [ ! -f "$repo/.cache/.gitignore" ]; then
  printf '# created by scripts/setup_node_tools.sh: caches only\n*\n' > "$repo/.cache/.gitignore"
fi
cp "$src/package.json" "$dest/package.json"
if [ -f "$src/package-lock.json" ]; then
  cp "$src/package-lock.json" "$dest/package-lock.json"
  (cd "$dest" && npm ci --no-audit --no-fund --loglevel=error)
else
  (cd "$dest" && npm install --no-audit --no-fund --loglevel=error)
fi

got="$(installed_version)"
[ "$got" = "$want_version" ] || die "expected @nimbella/nimbella-deployer $want_version in $dest, found '${got:-nothing}'"
echo "setup_node_tools: installed @nimbella/nimbella-deployer $got into $dest"
