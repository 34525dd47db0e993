#!/usr/bin/env bash
# Install everything deferd needs to build, test and run its demo on Debian 12 (bookworm).
#
#   deploy/install-deps.sh               build, test and demo packages
#   deploy/install-deps.sh --build-only  only what building the deferd binary needs, as the
#                                        build stage of deploy/Dockerfile uses it
#
# Run as root. Safe to run again: when every package is already installed it only checks
# with dpkg-query and exits, without touching the network.
set -euo pipefail

build_packages=(
  build-essential cmake ninja-build pkg-config ccache
  libboost1.81-dev libnghttp2-dev libyaml-cpp-dev libspdlog-dev prometheus-cpp-dev libjemalloc-dev
)

# Tests and demo: unit test framework, formatter, real peers, clients and checkers.
# prometheus provides promtool and the server that tests/integration/test_prometheus.py
# scrapes deferd with. python3-yaml reads the manifests in test_deploy_manifests.py.
# python3-uvloop makes the load generator of tests/bench/overload_priority.py cheaper.
test_packages=(
  googletest libgtest-dev clang-format-16
  nginx-light curl wrk nghttp2-client nghttp2-server prometheus haproxy time
  python3 python3-h2 python3-yaml python3-grpcio python3-grpc-tools python3-uvloop
)

case "${1:-}" in
  "") packages=("${build_packages[@]}" "${test_packages[@]}") ;;
  --build-only) packages=("${build_packages[@]}") ;;
  *)
    echo "install-deps: unknown option '$1'; expected no option or --build-only" >&2
    exit 2
    ;;
esac

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages are installed"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run this script as root to install them" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"

