#!/usr/bin/env bash
# Check that the C++ sources match .clang-format, without changing them.
#
#   bash tests/check-format.sh         report files that need formatting, exit 1 if any
#   bash tests/check-format.sh --fix   rewrite them in place
set -euo pipefail

cd "$(dirname "$0")/.."

clang_format=clang-format-16
if ! command -v "$clang_format" >/dev/null; then
  echo "check-format: $clang_format is not installed; run deploy/install-deps.sh as root" >&2
  exit 1
fi

mapfile -d '' files < <(find proxy config filters tests/unit -type f \
  \( -name '*.h' -o -name '*.hh' -o -name '*.hpp' -o -name '*.cc' -o -name '*.cpp' \) \
  -print0 2>/dev/null | sort -z)

if ((${#files[@]} == 0)); then
  echo "check-format: no C++ files found" >&2
  exit 1
fi

if [[ "${1:-}" == "--fix" ]]; then
  "$clang_format" -i "${files[@]}"
  exit 0
fi

if ! "$clang_format" --dry-run --Werror "${files[@]}"; then
  echo "check-format: the files above differ from .clang-format; run 'bash tests/check-format.sh --fix'" >&2
  exit 1
fi
echo "check-format: ${#files[@]} files formatted"
