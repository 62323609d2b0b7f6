"""Benchmarks that print figures: `python -m nanugpt.bench <what> [overrides] [bench.key=value]`.

The first argument picks the benchmark (one module here each, listed in `__main__.BENCHMARKS`);
the rest is a Hydra command line on `nanugpt/conf/bench.yaml`: the training config's overrides
(`model=gpt2_124m training.compile=true ...`) plus the typed `bench.*` options (BenchConfig in
nanugpt/config.py). Each benchmark prints a table and writes JSON (`bench.out`, default
bench-<what>.json) with the machine, torch version, the resolved config and the medians over
`bench.repeats` repeats. Warm-up steps (and compilation) are never timed. Wall-clock figures
are only as good as the machine is quiet: say how loaded it was.

    python -m nanugpt.bench train                                  # default model, real data
    python -m nanugpt.bench train model=gpt2_124m training.compile=true bench.synthetic=true \\
        training.device_batch_size=16 training.global_batch_size=16   # H100 MFU figure
    python -m nanugpt.bench generate bench.new_tokens=500          # KV cache vs recompute
    python -m nanugpt.bench prepare bench.bpe_file=/path/to/r50k_base.tiktoken
    python -m nanugpt.bench eval
    python -m nanugpt.bench speedrun data.local_path=/path/to/tinyshakespeare.txt bench.repeats=5
    python -m nanugpt.bench gpu bench.dry_run=true                 # the GPU check, at toy size on a CPU
    python -m nanugpt.bench memory model=gpt2_124m bench.synthetic=true   # estimate vs measured peak

A new benchmark is one function `(cfg) -> Result` in a module here, one entry in
`__main__.BENCHMARKS`, and its options (if any) as BenchConfig fields.
"""
