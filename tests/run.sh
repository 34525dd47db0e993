#!/usr/bin/env bash
# Build deferd and run every check: formatting, unit tests and integration tests.
#
#   bash tests/run.sh              both builds below, one after the other (what CI runs)
#   bash tests/run.sh --regular    regular build in build/, warnings as errors
#   bash tests/run.sh --sanitize   ASan+UBSan build in build-asan/
#
# On a fresh Debian 12 machine run it as root: it installs the packages it needs first.
# Exits non-zero when any step fails.
set -euo pipefail

cd "$(dirname "$0")/.."

mode=all
for arg in "$@"; do
  case "$arg" in
    --regular) mode=regular ;;
    --sanitize) mode=sanitize ;;
    -h | --help)
      sed -n '2,10p' "$0"
      exit 0
      ;;
    *)
      echo "run.sh: unknown argument '$arg'; expected --regular or --sanitize" >&2
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

# A formatting or test failure does not stop the run, so one run reports everything.
failed=()

step "Checking formatting"
if ! bash tests/check-format.sh; then
  failed+=("formatting (tests/check-format.sh)")
fi

# Builds in $1 with the CMake arguments that follow, then runs every unit and integration test.
run_suite() {
  local build_dir=$1
  shift

  step "Configuring $build_dir"
  # A build directory made with another generator cannot be reused; start it over.
  if [[ -f "$build_dir/CMakeCache.txt" ]]; then
    local cached wanted
    cached=$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$build_dir/CMakeCache.txt")
    wanted=$([[ ${#generator[@]} -gt 0 ]] && echo Ninja || echo "Unix Makefiles")
    if [[ "$cached" != "$wanted" ]]; then
      rm -rf "$build_dir"
    fi
  fi
  if ! cmake -S . -B "$build_dir" "${generator[@]}" "$@"; then
    failed+=("configure ($build_dir)")
    return
  fi

  step "Building $build_dir with $jobs jobs"
  if ! cmake --build "$build_dir" -j "$jobs"; then
    failed+=("build ($build_dir)")
    return
  fi

  step "Running unit and integration tests in $build_dir"
  # Streaming and load tests are marked RUN_SERIAL in tests/CMakeLists.txt, so -j2 never runs
  # them beside another test.
  if ! ctest --test-dir "$build_dir" --output-on-failure -j2 -L 'unit|integration'; then
    failed+=("tests ($build_dir)")
  fi
}

# Leaks and undefined behaviour fail the sanitized run; the settings are harmless otherwise.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

if [[ $mode != sanitize ]]; then
  run_suite build -DDEFERD_WERROR=ON
fi
if [[ $mode != regular ]]; then
  # Warnings stay errors in the regular build only. The GCC manual (-fsanitize options)
  # recommends against combining -Werror with sanitizers, because they cause false positive
  # warnings, and GCC 12 does report -Wmaybe-uninitialized inside std::regex here.
  run_suite build-asan -DDEFERD_WERROR=OFF -DDEFERD_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi

if ((${#failed[@]} > 0)); then
  step "Failed: ${failed[*]}"
  exit 1
fi
step "All checks passed"
