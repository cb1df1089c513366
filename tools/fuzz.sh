#!/usr/bin/env bash
# Fuzz soak: runs tests/fuzz/uhmm_fuzz on every configuration (or one) with fresh random seeds
# until N minutes have passed, then prints per-configuration totals. Exits non-zero on any failure.
# Usage: tools/fuzz.sh --minutes N [--config C] [--threads T] [-- extra uhmm_fuzz flags]
# Failure logs and replay files go to build/fuzz-soak/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=""
configs=(host same_address cuda_emulated level_zero_emulated hugetlb)
threads=3
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2;;
    --config) configs=("$2"); shift 2;;
    --threads) threads="$2"; shift 2;;
    --) shift; extra=("$@"); break;;
    *) echo "usage: tools/fuzz.sh --minutes N [--config C] [--threads T] [-- uhmm_fuzz flags]" >&2; exit 2;;
  esac
done
if [[ -z "$minutes" ]]; then
  echo "usage: tools/fuzz.sh --minutes N [--config C] [--threads T] [-- uhmm_fuzz flags]" >&2
  exit 2
fi

fuzz=build/release/tests/uhmm_fuzz
if [[ ! -d build/release ]]; then
  cmake --preset release >/dev/null
fi
cmake --build build/release --target uhmm_fuzz >/dev/null

out="build/fuzz-soak/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
declare -A runs ops secs fails skipped
for c in "${configs[@]}"; do runs[$c]=0; ops[$c]=0; secs[$c]=0; fails[$c]=0; skipped[$c]=""; done

end=$(( $(date +%s) + minutes * 60 ))
round=0
while [[ $(date +%s) -lt $end ]]; do
  for c in "${configs[@]}"; do
    [[ -n "${skipped[$c]}" ]] && continue
    left=$(( end - $(date +%s) ))
    [[ $left -le 0 ]] && break
    # Runs of up to 60 s each, so that every configuration gets its share.
    run_s=$(( left < 60 ? left : 60 ))
    round=$((round + 1))
    log="$out/$c-$round.log"
    rc=0
    "$fuzz" --config "$c" --seed random --threads "$threads" --seconds "$run_s" --out-dir "$out" \
      "${extra[@]}" >"$log" 2>&1 || rc=$?
    if grep -q '^SKIPPED:' "$log"; then
      skipped[$c]=$(grep -m1 '^SKIPPED:' "$log")
      echo "$c: $(cat "$log")"
      continue
    fi
    summary=$(grep -m1 '^uhmm_fuzz summary:' "$log" || true)
    runs[$c]=$(( ${runs[$c]} + 1 ))
    if [[ -n "$summary" ]]; then
      n=$(sed -E 's/.* ops=([0-9]+) .*/\1/' <<<"$summary")
      s=$(sed -E 's/.* seconds=([0-9.]+) .*/\1/' <<<"$summary")
      ops[$c]=$(( ${ops[$c]} + n ))
      secs[$c]=$(awk -v a="${secs[$c]}" -v b="$s" 'BEGIN { print a + b }')
    fi
    seed=$(grep -m1 -oE 'seed=[0-9]+' "$log" || echo "seed=?")
    if [[ $rc -ne 0 ]]; then
      fails[$c]=$(( ${fails[$c]} + 1 ))
      echo "FAIL $c $seed (exit $rc): $log"
      grep -E '^uhmm_fuzz (FAILURE|HANG)|^  |shrunk|reproduce' "$log" | head -20 | sed 's/^/    /'
    else
      echo "ok   $c $seed: ${summary#uhmm_fuzz summary: }" | cut -c1-160
    fi
  done
done

echo
echo "fuzz soak: $minutes minute(s), logs in $out"
printf '%-22s %6s %10s %10s %9s\n' config runs ops ops/s failures
total_fails=0
for c in "${configs[@]}"; do
  if [[ -n "${skipped[$c]}" ]]; then
    printf '%-22s %s\n' "$c" "${skipped[$c]}"
    continue
  fi
  rate=$(awk -v o="${ops[$c]}" -v s="${secs[$c]}" 'BEGIN { printf "%.0f", s > 0 ? o / s : 0 }')
  printf '%-22s %6d %10d %10s %9d\n' "$c" "${runs[$c]}" "${ops[$c]}" "$rate" "${fails[$c]}"
  total_fails=$(( total_fails + ${fails[$c]} ))
done
[[ $total_fails -eq 0 ]]
