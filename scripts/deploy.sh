#!/usr/bin/env bash
# Deploy ColdCopy to DigitalOcean (see docs/deploy.md):
#   1. the runner app on App Platform, from runner_image/app.yaml (create, or update if RUNNER_APP_ID is set);
#   2. the Functions project, from project.yml (`doctl serverless deploy`, which runs each function's
#      build.sh locally: no --remote-build, see scripts/build_function.sh).
#
#   scripts/deploy.sh [--dry-run] [--env FILE] [--functions-only | --runner-only]
#
# Values come from the process environment first, then the env file (default .env), like the
# functions deployer. Every placeholder of project.yml and runner_image/app.yaml must have a
# non-empty value, but the runner's optional ones (SUPABASE_STORAGE_*: their lines are left out when
# empty). --dry-run checks everything it can without doctl and prints the commands.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_file="$repo/.env"
dry_run=0
do_runner=1
do_functions=1
unset_app_id="00000000-0000-0000-0000-000000000000"   # the example's "not created yet"

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "deploy: $*" >&2; exit 1; }
note() { echo "deploy: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --env) [ $# -ge 2 ] || die "--env needs a file"; env_file="$2"; shift ;;
    --env=*) env_file="${1#--env=}" ;;
    --functions-only) do_runner=0 ;;
    --runner-only) do_functions=0 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
[ "$do_runner$do_functions" != "00" ] || die "--functions-only and --runner-only exclude each other"

# -- prerequisites -------------------------------------------------------------------------------
python3 -c '' >/dev/null 2>&1 || die "a working python3 is needed (it also builds the functions' dependencies)"
if ! command -v doctl >/dev/null 2>&1; then
  msg="doctl is not installed: https://docs.digitalocean.com/reference/doctl/how-to/install/ (then doctl auth init)"
  if [ "$dry_run" = 1 ]; then note "warning: $msg"; else die "$msg"; fi
fi
[ -f "$env_file" ] || die "$env_file not found: cp deploy/functions.env.example .env and fill in every value"

# One small Python helper reads the env file, lists missing variables and renders the app spec,
# so that parsing, quoting and escaping are done once, correctly.
helper() {
  python3 - "$@" <<'PY'
import json, os, re, sys
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
OPTIONAL = re.compile(r"\$\{\?([A-Za-z_][A-Za-z0-9_]*)\}")

def env_file(path):
    values = {}
    for raw in open(path, encoding="utf-8"):
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values

cmd, path = sys.argv[1], sys.argv[2]
values = {**env_file(path), **{k: v for k, v in os.environ.items() if v}}
if cmd == "get":
    print(values.get(sys.argv[3], ""))
elif cmd == "missing":  # missing <file>... : placeholders without a non-empty value
    names = sorted({n for f in sys.argv[3:] for n in VAR.findall(open(f, encoding="utf-8").read())})
    print(" ".join(n for n in names if not values.get(n)))
elif cmd == "yamlenv":  # yamlenv <template>: NAME=value\0 for doctl's environment, escaped
    # The functions deployer pastes each value into project.yml's double quotes as raw text, so a
    # `"` or `\` (a database password may hold them) would break the YAML or change the value. It
    # reads the process environment first: give it the YAML-escaped form (JSON escapes are YAML's).
    for name in sorted(set(VAR.findall(open(sys.argv[3], encoding="utf-8").read()))):
        if values.get(name):
            sys.stdout.write(f"{name}={json.dumps(values[name])[1:-1]}\0")
elif cmd == "render":  # render <template> <out>: JSON escapes are valid in YAML double quotes
    # An optional placeholder (a question mark before the name) without a value drops its line.
    lines = [
        ln for ln in open(sys.argv[3], encoding="utf-8").read().splitlines(keepends=True)
        if all(values.get(n) for n in OPTIONAL.findall(ln))
    ]
    text = OPTIONAL.sub(lambda m: "${" + m.group(1) + "}", "".join(lines))
    fd = os.open(sys.argv[4], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(VAR.sub(lambda m: json.dumps(values[m.group(1)])[1:-1], text))
elif cmd == "partial":  # partial <template>: optional settings of one group set while others are not
    names = sorted(set(OPTIONAL.findall(open(sys.argv[3], encoding="utf-8").read())))
    storage = [n for n in names if n.startswith("SUPABASE_STORAGE_") and n != "SUPABASE_STORAGE_REGION"]
    if any(values.get(n) for n in storage):
        print(" ".join(n for n in storage if not values.get(n)))
PY
}
get() { helper get "$env_file" "$1"; }

app_id="$(get RUNNER_APP_ID)"
[ "$app_id" = "$unset_app_id" ] && app_id=""

needed=()
[ "$do_runner" = 1 ] && needed+=("$repo/runner_image/app.yaml")
[ "$do_functions" = 1 ] && needed+=("$repo/project.yml")
read -r -a listed <<< "$(helper missing "$env_file" "${needed[@]}")"
missing=()
for name in "${listed[@]}"; do
  [ "$name" = RUNNER_APP_ID ] && continue   # created below, or required just after
  missing+=("$name")
done
if [ "$do_runner" = 0 ] && [ -z "$app_id" ]; then
  missing+=(RUNNER_APP_ID)   # deploying only the functions: the runner app must already exist
fi
[ ${#missing[@]} -eq 0 ] || die "set these in $env_file (non-empty; see deploy/functions.env.example): ${missing[*]}"
if [ "$do_runner" = 1 ]; then
  partial="$(helper partial "$env_file" "$repo/runner_image/app.yaml")"
  [ -z "$partial" ] || die "files snapshots need SUPABASE_STORAGE_ENDPOINT, _KEY and _SECRET together; set in $env_file: $partial (or leave all three empty)"
fi

run() {
  if [ "$dry_run" = 1 ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

# -- 1. runner app ---------------------------------------------------------------------------------
if [ "$do_runner" = 1 ]; then
  tag="$(get RUNNER_IMAGE_TAG)"
  spec_dir="$(mktemp -d)"
  trap 'rm -rf "$spec_dir"' EXIT
  spec="$spec_dir/app.yaml"
  helper render "$env_file" "$repo/runner_image/app.yaml" "$spec"
  if [ "$dry_run" = 0 ]; then
    doctl registry repository list-tags coldcopy-runner --format Tag --no-header 2>/dev/null | grep -qx "$tag" \
      || die "image coldcopy-runner:$tag is not in your registry; build and push it first (docs/deploy.md)"
  fi
  if [ -n "$app_id" ]; then
    note "updating runner app $app_id (this deployment runs the runner job once)"
    run doctl apps update "$app_id" --spec "$spec"
  else
    note "creating the runner app"
    if [ "$dry_run" = 1 ]; then
      run doctl apps create --spec "$spec" --format ID --no-header
      app_id="<new-app-id>"
    else
      app_id="$(doctl apps create --spec "$spec" --format ID --no-header | tr -d '[:space:]')"
      [ -n "$app_id" ] || die "doctl apps create did not print the new app's id"
      note "created runner app $app_id: add RUNNER_APP_ID=$app_id to $env_file"
    fi
  fi
  export RUNNER_APP_ID="$app_id"   # the deployer reads the process environment before the env file
fi

# -- 2. functions ----------------------------------------------------------------------------------
if [ "$do_functions" = 1 ]; then
  if [ "$dry_run" = 0 ]; then
    doctl serverless status >/dev/null 2>&1 \
      || die "doctl is not connected to a functions namespace: doctl serverless connect (docs/deploy.md)"
  fi
  while IFS= read -r -d '' pair; do
    export "${pair?}"   # the values project.yml uses, escaped for its double quotes (see the helper)
  done < <(helper yamlenv "$env_file" "$repo/project.yml")
  note "deploying the functions (each build.sh installs its Linux wheels locally)"
  run doctl serverless deploy "$repo" --env "$env_file"
fi
if [ "$dry_run" = 1 ]; then note "dry run: nothing was changed"; else note "done"; fi
