#!/usr/bin/env bash
# Runs the tests under another Node.js release, in a fresh clone of this
# repository's committed HEAD, with the addon built against that release's
# headers. The release comes from the npm registry (the node-linux-<arch>
# package holds its binary and headers), so nothing else needs to be reachable.
#
#   bash scripts/test-on-node.sh 22                # npm test under the latest Node 22
#   bash scripts/test-on-node.sh 24.21.0 node --import tsx --test test/tls.test.ts
set -euo pipefail
version=${1:?usage: test-on-node.sh VERSION [COMMAND...]  (VERSION: 22, 24, 22.23.3, ...; COMMAND: default npm test)}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

bash "$root/scripts/fetch-node.sh" "$version" "$work/node"
git clone -q "$root" "$work/repo"
cd "$work/repo"
export PATH="$work/node/bin:$PATH" npm_config_nodedir="$work/node"
echo "test-on-node: Node $(node --version) (OpenSSL $(node -p process.versions.openssl)), $(git log --oneline -1)"
npm ci
if [ "$#" -gt 0 ]; then "$@"; else npm test; fi
