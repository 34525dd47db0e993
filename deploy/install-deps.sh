#!/usr/bin/env bash
# Install everything deferd needs to build, test and run its demo on Debian 12 (bookworm).
#
# Run as root. Safe to run again: when every package is already installed it only checks
# with dpkg-query and exits, without touching the network.
set -euo pipefail

packages=(
  # Build
  build-essential cmake ninja-build pkg-config ccache
  libboost1.81-dev libnghttp2-dev libyaml-cpp-dev libspdlog-dev prometheus-cpp-dev
  googletest libgtest-dev clang-format-16
  # Tests and demo: real peers, clients and checkers
  nginx-light curl wrk nghttp2-client nghttp2-server prometheus haproxy time
  python3 python3-h2 python3-grpcio python3-grpc-tools
)

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

