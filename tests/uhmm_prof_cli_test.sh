#!/usr/bin/env bash
# The uhmm-prof command line, one case per ctest entry:
#   uhmm_prof_cli_test.sh CASE UHMM_PROF TRACE_GEN
# TRACE_GEN (uhmm_prof_trace_gen) writes the trace files at test time. Each case checks the exit
# status and the message.
set -uo pipefail
case_name="$1"
abs() { [[ "$1" == /* ]] && echo "$1" || echo "$PWD/$1"; }
prof="$(abs "$2")"; gen="$(abs "$3")"
dir="$(mktemp -d "${TMPDIR:-/tmp}/uhmm-prof-cli.XXXXXX")"
trap 'rm -rf "$dir"' EXIT
cd "$dir" || exit 1

failed=0
out=""
rc=0
# run CMD...: runs it, output (stdout and stderr) in $out, status in $rc.
run() {
  out="$("$@" 2>&1)"
  rc=$?
  printf '$ %s\n%s\n[exit %d]\n' "$*" "$out" "$rc"
}
expect_rc() {
  if [[ "$rc" != "$1" ]]; then
    echo "FAIL: exit status $rc, expected $1"
    failed=1
  fi
}
# expect_out REGEX: some line of the output matches (grep -E).
expect_out() {
  if ! grep -Eq -- "$1" <<<"$out"; then
    echo "FAIL: no line of the output matches: $1"
    failed=1
  fi
}
expect_no_out() {
  if grep -Eq -- "$1" <<<"$out"; then
    echo "FAIL: the output should not match: $1"
    failed=1
  fi
}
# expect_one_line: errors about files are one line starting "uhmm-prof: ".
expect_one_line() {
  if [[ "$(wc -l <<<"$out")" != 1 || "$out" != "uhmm-prof: "* ]]; then
    echo "FAIL: expected one line starting 'uhmm-prof: '"
    failed=1
  fi
}
gen() { "$gen" "$@" || { echo "FAIL: $gen $*"; exit 1; }; }

case "$case_name" in
  help)
    run "$prof" --help
    expect_rc 0
    expect_out '^usage: uhmm-prof record \[-o FILE\] \[--\] PROGRAM \[ARGS\.\.\.\]$'
    expect_out '^       uhmm-prof report FILE \[--chrome OUT\.json\] \[--plot OUT\.svg\] \[--top N\]$'
    ;;
  usage)
    run "$prof"
    expect_rc 2
    expect_out '^uhmm-prof: a command is needed'
    expect_out '^usage: uhmm-prof'
    run "$prof" frobnicate
    expect_rc 2
    expect_out "^uhmm-prof: unknown command 'frobnicate'"
    run "$prof" report
    expect_rc 2
    expect_out '^uhmm-prof: report needs a trace file'
    gen full t.trace
    run "$prof" report t.trace --top lots
    expect_rc 2
    expect_out "^uhmm-prof: --top wants a number of ranges, not 'lots'"
    run "$prof" report t.trace --chrome
    expect_rc 2
    expect_out '^uhmm-prof: --chrome needs a value'
    run "$prof" report t.trace --bogus
    expect_rc 2
    expect_out "^uhmm-prof: unknown report option '--bogus'"
    run "$prof" report t.trace t.trace
    expect_rc 2
    run "$prof" record
    expect_rc 2
    expect_out '^uhmm-prof: record needs a program to run'
    run "$prof" record -o
    expect_rc 2
    expect_out '^uhmm-prof: -o needs a file name'
    run "$prof" record --bogus -- /bin/true
    expect_rc 2
    expect_out "^uhmm-prof: unknown record option '--bogus'"
    ;;
  report_missing)
    run "$prof" report nothing-here.trace
    expect_rc 2
    expect_one_line
    expect_out '^uhmm-prof: cannot open trace file nothing-here\.trace: No such file or directory$'
    ;;
  report_empty)
    gen empty e.trace
    run "$prof" report e.trace
    expect_rc 2
    expect_one_line
    expect_out '^uhmm-prof: trace file e\.trace is empty: the traced program wrote nothing'
    ;;
  report_foreign)
    gen foreign notes.txt
    run "$prof" report notes.txt
    expect_rc 2
    expect_one_line
    expect_out '^uhmm-prof: notes\.txt is not a uhmm trace file'
    ;;
  report_truncated)
    gen truncated-header h.trace
    run "$prof" report h.trace
    expect_rc 2
    expect_one_line
    expect_out '^uhmm-prof: trace file h\.trace is truncated: 30 bytes, shorter than its 64-byte header$'
    gen truncated-record r.trace
    run "$prof" report r.trace
    expect_rc 2
    expect_one_line
    expect_out '^uhmm-prof: trace file r\.trace is truncated: 5 complete records, then 40 bytes of a cut-off record$'
    ;;
  report)
    gen full t.trace
    run "$prof" report t.trace --chrome t.json --plot t.svg
    expect_rc 0
    expect_out '^  backend      host$'
    expect_out '^  faults       110 \(duplicates 10, covered 0, stale 0, SIGBUS 0\)$'
    expect_out '^  copy +100 +50\.00 +90\.00 +99\.00 +100\.00 +50\.50$'
    expect_out '^  end to end +110 +55\.00 +99\.00 +109\.00 +110\.00 '
    expect_out '^ +64-128 \|#{50} 47$'
    expect_out '^  0x7f0000000000 +64\.0 MiB +90 +53\.00 +109\.00$'
    expect_out '^  host->device +4 +8\.0 MiB +4\.000 +2\.10 +2\.33$'
    expect_out '^Chrome trace \([0-9]+ events\) written to t\.json'
    expect_out '^latency plot written to t\.svg$'
    expect_no_out 'warning'
    [[ -s t.json && -s t.svg ]] || { echo "FAIL: t.json or t.svg missing"; failed=1; }
    [[ "$(head -c 4 t.svg)" == "<svg" ]] || { echo "FAIL: t.svg does not start with <svg"; failed=1; }
    if command -v python3 >/dev/null 2>&1; then
      python3 -c 'import json,sys; json.load(open(sys.argv[1], encoding="utf-8"))' t.json ||
        { echo "FAIL: python3 rejects t.json"; failed=1; }
    fi
    run "$prof" report --top=0 t.trace
    expect_rc 0
    expect_no_out 'managed ranges'
    ;;
  report_nofaults)
    gen nofaults n.trace
    run "$prof" report n.trace
    expect_rc 0
    expect_out '^no CPU faults in this trace$'
    expect_no_out 'p50'
    ;;
  report_incomplete)
    gen incomplete i.trace
    run "$prof" report i.trace
    expect_rc 0
    expect_out '^warning: the trace is incomplete \(no end record\)'
    gen dropped d.trace
    run "$prof" report d.trace
    expect_rc 0
    expect_out '^warning: 7 records were dropped'
    ;;
  report_outputs)
    gen full t.trace
    run "$prof" report t.trace --plot t.png
    expect_rc 2
    expect_one_line
    expect_out "^uhmm-prof: --plot writes SVG only: 't\.png' does not end in \.svg$"
    [[ ! -e t.png ]] || { echo "FAIL: t.png written"; failed=1; }
    run "$prof" report t.trace --chrome no-such-dir/t.json
    expect_rc 2
    expect_one_line
    expect_out '^uhmm-prof: cannot write no-such-dir/t\.json: No such file or directory$'
    run "$prof" report t.trace --plot no-such-dir/t.svg
    expect_rc 2
    expect_one_line
    expect_out '^uhmm-prof: cannot write no-such-dir/t\.svg: '
    run "$prof" report t.trace --chrome t.trace
    expect_rc 2
    expect_out '^uhmm-prof: refusing to overwrite the trace file t\.trace'
    ;;
  record_no_trace)
    run "$prof" record -o none.trace -- /bin/true
    expect_rc 0
    expect_out '^uhmm-prof: /bin/true wrote no trace to none\.trace \(did it create a uhmm runtime\?'
    # An old trace there is left alone and not taken for a new one.
    gen full old.trace
    run "$prof" record -o old.trace -- /bin/true
    expect_rc 0
    expect_out 'wrote no trace to old\.trace'
    [[ -s old.trace ]] || { echo "FAIL: old.trace removed"; failed=1; }
    ;;
  record_status)
    run "$prof" record -o x.trace -- /bin/sh -c 'exit 3'
    expect_rc 3
    run "$prof" record -o x.trace -- /bin/sh -c 'kill -TERM $$'
    expect_rc 143
    expect_out '^uhmm-prof: /bin/sh was killed by signal 15'
    run "$prof" record -o x.trace -- ./no-such-program
    expect_rc 127
    expect_out '^uhmm-prof: cannot run \./no-such-program: No such file or directory$'
    run "$prof" record -o no-such-dir/x.trace -- /bin/true
    expect_rc 2
    expect_one_line
    expect_out '^uhmm-prof: cannot write the trace to no-such-dir/x\.trace: No such file or directory$'
    ;;
  record)
    # The traced program sees UHMM_TRACE as an absolute path.
    run "$prof" record -o rel.trace -- /bin/sh -c 'echo "UHMM_TRACE=$UHMM_TRACE"'
    expect_rc 0
    expect_out "^UHMM_TRACE=$dir/rel\\.trace\$"
    # A program that writes a trace (like a uhmm program under UHMM_TRACE).
    run "$prof" record -o t.trace -- "$gen" full
    expect_rc 0
    expect_out '^uhmm-prof: trace written to t\.trace \([0-9]+ records, 110 faults\); see uhmm-prof report t\.trace$'
    run "$prof" report t.trace
    expect_rc 0
    expect_out '^  faults       110 '
    run "$prof" record -o t.trace "$gen" incomplete
    expect_rc 0
    expect_out '^uhmm-prof: trace written to t\.trace \([0-9]+ records, 110 faults; incomplete: no end record'
    # %p: the program's process id.
    run "$prof" record --output=p.%p.trace -- "$gen" full
    expect_rc 0
    expect_out '^uhmm-prof: trace written to p\.[0-9]+\.trace \('
    # A trace the program left unreadable.
    run "$prof" record -o e.trace -- "$gen" empty
    expect_rc 0
    expect_out '^uhmm-prof: trace file e\.trace is empty'
    ;;
  *)
    echo "unknown case $case_name"
    exit 2
    ;;
esac
if [[ "$failed" != 0 ]]; then
  echo "case $case_name FAILED"
  exit 1
fi
echo "case $case_name passed"
