#!/bin/bash
# Run by the functions deployer (doctl serverless deploy, local build) in this directory.
# One shared recipe for every function; see scripts/build_function.sh for the why.
set -euo pipefail
exec bash ../../../scripts/build_function.sh
