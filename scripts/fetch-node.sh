#!/usr/bin/env bash
# Puts a Node.js release into DIR (DIR/bin/node, DIR/include for node-gyp),
# from the npm registry's node-linux-<arch> package, so that nothing but the
# registry needs to be reachable. Used by .ci/run and scripts/test-on-node.sh.
#
#   bash scripts/fetch-node.sh 26 /tmp/node-26     # the latest 26.x
set -euo pipefail
version=${1:?usage: fetch-node.sh VERSION DIR}
dir=${2:?usage: fetch-node.sh VERSION DIR}
case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64) arch=arm64 ;;
  *) echo "fetch-node: no node-linux package for $(uname -m)" >&2; exit 2 ;;
esac
rm -rf "$dir"
mkdir -p "$dir"
cd "$dir"
npm pack --silent "node-linux-$arch@$version" >/dev/null
tar xzf node-linux-*.tgz --strip-components=1
rm -f node-linux-*.tgz
