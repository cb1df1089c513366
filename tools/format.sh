#!/usr/bin/env bash
# Formats the C, C++ and CUDA sources with the repository's .clang-format (clang-format 14, the
# version Debian 12 ships: other versions format differently).
#   tools/format.sh           rewrite every source in place (tracked, or new and not ignored)
#   tools/format.sh --check   change nothing; list the files that differ and exit 1 if any (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
cf=$(command -v clang-format-14 || command -v clang-format || true)
if [[ -z "$cf" ]]; then
  echo "tools/format.sh: clang-format-14 is not installed (tools/setup.sh installs it)" >&2
  exit 2
fi
# New files too: a source formatted only once it is committed would fail the CI check.
mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.c' '*.cc' '*.h' '*.hpp' '*.cu' '*.cuh')
if [[ "${1:-}" == "--check" ]]; then
  bad=()
  for f in "${files[@]}"; do
    "$cf" --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
  done
  if [[ ${#bad[@]} -gt 0 ]]; then
    echo "tools/format.sh: ${#bad[@]} file(s) are not formatted; run tools/format.sh:" >&2
    printf '  %s\n' "${bad[@]}" >&2
    exit 1
  fi
  echo "tools/format.sh: ${#files[@]} files formatted"
  exit 0
fi
"$cf" -i "${files[@]}"
