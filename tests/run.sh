#!/usr/bin/env bash
# Build deferd and run every check: formatting, unit tests and integration tests.
#
#   bash tests/run.sh              regular build in build/
#   bash tests/run.sh --sanitize   ASan+UBSan build in build-asan/ (unit + integration tests)
#
# On a fresh Debian 12 machine run it as root: it installs the packages it needs first.
# Exits non-zero when any step fails.
set -euo pipefail

cd "$(dirname "$0")/.."

sanitize=0
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=1 ;;
    -h | --help)
      sed -n '2,8p' "$0"
      exit 0
      ;;
    *)
      echo "run.sh: unknown argument '$arg'; expected --sanitize" >&2
      exit 2
      ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }

step "Installing dependencies"
bash deploy/install-deps.sh

generator=()
if command -v ninja >/dev/null; then
  generator=(-G Ninja)
fi
jobs=$(nproc)

if ((sanitize)); then
  build_dir=build-asan
  # Warnings stay errors in the regular build only. The GCC manual (-fsanitize options)
  # recommends against combining -Werror with sanitizers, because they cause false positive
  # warnings, and GCC 12 does report -Wmaybe-uninitialized inside std::regex here.
  cmake_args=(-DDEFERD_WERROR=OFF -DDEFERD_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo)
else
  build_dir=build
  cmake_args=(-DDEFERD_WERROR=ON)
fi

step "Configuring $build_dir"
# A build directory made with another generator cannot be reused; start it over.
if [[ -f "$build_dir/CMakeCache.txt" ]]; then
  cached=$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$build_dir/CMakeCache.txt")
  wanted=$([[ ${#generator[@]} -gt 0 ]] && echo Ninja || echo "Unix Makefiles")
  if [[ "$cached" != "$wanted" ]]; then
    rm -rf "$build_dir"
  fi
fi
cmake -S . -B "$build_dir" "${generator[@]}" "${cmake_args[@]}"

step "Building with $jobs jobs"
cmake --build "$build_dir" -j "$jobs"

# A formatting failure does not stop the tests, so one run reports both.
failed=()

step "Checking formatting"
if ! bash tests/check-format.sh; then
  failed+=("formatting (tests/check-format.sh)")
fi

step "Running unit and integration tests"
# Leaks and undefined behaviour fail the sanitized run; the settings are harmless otherwise.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# Streaming and load tests are marked RUN_SERIAL in tests/CMakeLists.txt, so -j2 never runs
# them beside another test.
if ! ctest --test-dir "$build_dir" --output-on-failure -j2 -L 'unit|integration'; then
  failed+=("tests (ctest in $build_dir)")
fi

if ((${#failed[@]} > 0)); then
  step "Failed: ${failed[*]}"
  exit 1
fi
step "All checks passed"
