#!/usr/bin/env bash
# uhmm-prof end to end on a real program: record the main demo (host backend here), report it with
# the Chrome trace and the plot, and check what a user relies on: per-phase percentiles with every
# fault counted, valid trace-event JSON, an SVG picture.
#   uhmm_prof_demo_test.sh UHMM_PROF DEMO
set -euo pipefail
prof="$(realpath "$1")"; demo="$(realpath "$2")"
dir="$(mktemp -d "${TMPDIR:-/tmp}/uhmm-prof-demo.XXXXXX")"
trap 'rm -rf "$dir"' EXIT
cd "$dir"

UHMM_BACKEND=host "$prof" record -o demo.trace -- "$demo" 2>&1 | tee record.out
grep -Eq '^uhmm-prof: trace written to .*demo\.trace \([0-9]+ records, [1-9][0-9]* faults\)' record.out

"$prof" report demo.trace --chrome demo.json --plot demo.svg | tee report.out
faults=$(sed -nE 's/^  faults +([0-9]+) .*/\1/p' report.out)
for phase in lookup submit copy map wake "end to end"; do
  line=$(grep -E "^  $phase +[0-9]" report.out) || { echo "FAIL: no '$phase' row"; exit 1; }
  echo "$line" | awk '{ if ($(NF-5) + 0 <= 0) exit 1 }' || { echo "FAIL: '$phase' has no samples"; exit 1; }
done
e2e_count=$(grep -E '^  end to end +[0-9]' report.out | awk '{print $4}')
[[ "$e2e_count" == "$faults" ]] || { echo "FAIL: end to end counts $e2e_count of $faults faults"; exit 1; }

if command -v python3 >/dev/null; then
  python3 - demo.json <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
events = doc["traceEvents"]
assert any(e.get("cat") == "fault" and e.get("ph") == "X" for e in events), "no fault events"
assert all("ph" in e and "pid" in e for e in events)
print("demo.json: valid trace-event JSON,", len(events), "events")
PY
fi
head -c 200 demo.svg | grep -q '<svg' || { echo "FAIL: demo.svg is not SVG"; exit 1; }
tail -c 20 demo.svg | grep -q '</svg>' || { echo "FAIL: demo.svg is cut off"; exit 1; }
echo PASS
