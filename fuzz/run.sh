#!/usr/bin/env bash
# Fuzzes the pipeline loader (parse, check validation, plan under every
# profile) with cargo-fuzz for a bounded time:
#
#   fuzz/run.sh [SECONDS]        (default 240)
#
# Not part of .ci/run: cargo-fuzz needs a nightly toolchain (and
# `cargo install cargo-fuzz`), and CI has stable only. CI runs the bounded,
# deterministic fuzzer of crates/engine/tests/loader.rs instead.
#
# Seeds: the bad-pipeline corpus (crates/engine/tests/data/bad) and every
# pipeline under pipelines/; they are only read. New inputs go to
# fuzz/corpus/, crashes to fuzz/artifacts/pipeline_loader/ (both ignored by
# git). Reproduce a crash with
#   cargo +nightly fuzz run pipeline_loader fuzz/artifacts/pipeline_loader/<file>
# and keep it as a regression test in crates/engine/tests/ before fixing it.
set -euo pipefail
seconds="${1:-240}"
fuzz_dir="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$fuzz_dir")"
corpus="$fuzz_dir/corpus/pipeline_loader"
mkdir -p "$corpus"
cd "$root"
# libFuzzer writes new inputs to the first corpus directory only.
exec cargo +nightly fuzz run pipeline_loader "$corpus" "$root/crates/engine/tests/data/bad" "$root/pipelines" -- \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -dict="$fuzz_dir/yaml.dict" -print_final_stats=1
