#!/usr/bin/env bash
# Fuzzing (libFuzzer through cargo fuzz) of every parser that takes input from outside: pod
# manifests, KubeletConfiguration + flags, quantities/durations/URLs/resolv.conf, the kubelet
# API's query strings, the CRI log format, a CNI call's environment + network config +
# prevResult, OCI config.json, the runtime's command line, the shim's task API requests.
# Targets are in fuzz/fuzz_targets, seeds in fuzz/corpus/<target>.
#
#   hack/fuzz.sh [SECONDS]     each target for SECONDS (default 60); FUZZ_TARGETS="a b" picks
#
# Prints, per target, the executions, coverage (libFuzzer's `cov`, edges) and corpus size. A
# crash (a panic) stops with exit 1 and names the input under fuzz/artifacts/<target>/: turn
# it into a regression test beside the parser and fix the panic. The stable toolchain builds
# with `--sanitizer none` (AddressSanitizer needs nightly); Rust's own checks (bounds,
# overflow with debug assertions, which cargo fuzz turns on) are what catches the bugs.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
cd fuzz
build=(--sanitizer none)
# FUZZ_DEV=1: an unoptimised build, quicker to make (CI's short runs).
[ "${FUZZ_DEV:-0}" = 1 ] && build+=(--dev)
cargo fuzz build "${build[@]}"
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
work=../build/fuzz
printf '%-20s %12s %10s %8s %8s\n' target executions exec/s cov corpus
for t in $targets; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  # New inputs go to the work corpus (build/, not committed); the seeds stay as they are.
  if ! cargo fuzz run "${build[@]}" "$t" "$work/$t" "corpus/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
      >"$log" 2>&1; then
    echo "FAIL: fuzz target $t crashed; input and log:" >&2
    ls -1 "artifacts/$t/" >&2 || true
    grep -E "panicked|ERROR: libFuzzer" -A3 "$log" | head -20 >&2
    exit 1
  fi
  execs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log")
  rate=$(awk '/stat::average_exec_per_sec/ {print $NF}' "$log")
  # The last status line: "#<runs> <event> cov: <edges> ft: <features> corp: <n>/<size> ...".
  done_line=$(grep -E '^#[0-9]+[[:space:]].*cov: ' "$log" | tail -1 || true)
  cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$done_line")
  corp=$(sed -nE 's/.*corp: ([0-9]+).*/\1/p' <<<"$done_line")
  printf '%-20s %12s %10s %8s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${corp:-?}"
done
echo "fuzz: ${secs} s per target, no crash"
